"""ensemble's benchmark suite: every case measured beside its floor or peer in the same run.

    python -m bench [--quick] [--only CASE ...] [--out DIR]
"""
