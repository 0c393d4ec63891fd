"""What the project workflow (project.yml) needs: corpus converters and
fetchers, the random character BERT, demo texts. Reached through the
command line (`python -m spacy_earlyexit ...`)."""
