"""Train the report's base model in several frameworks and compare them: a study of the checkout, not
part of aer's wheel. Run it from the repository root: `python -m studies.frameworks --help`."""
