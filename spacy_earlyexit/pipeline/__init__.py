"""The spaCy side: the `earlyexit_tagger` component, its tasks, scorer,
extensions, registered architectures and training callbacks."""
