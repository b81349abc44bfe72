"""Corpus preparation: fetches the default training text; downloaded corpora live here, git-ignored."""
