"""What a user looks at: the unfolded DAG (``unfold``), diagrams (``draw``) and equations in
textbook notation (``latex``)."""
