"""RAG evaluation pack: the Tidewater handbook (written for this project, CC0), questions
with gold passages, and a runner (``python -m evals.rag``) for retrieval, citation and
abstention quality.
"""
