"""`python -m runtime.schema` prints the settings JSON Schema (stored as settings/schema.json)."""

from runtime.settings import schema_text

if __name__ == "__main__":
    print(schema_text(), end="")
