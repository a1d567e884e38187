"""Train the report's base model in several frameworks and compare them (`python -m aer.frameworks`)."""
