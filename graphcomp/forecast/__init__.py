"""Running a trained model: free-running generation one step at a time (``generate``), and
simulation and n-step prediction of lists of sequences (``predict``)."""
