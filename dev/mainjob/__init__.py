"""The library of the README's first command (`python3 dev/run_main.py`).

- `options`: its command line (stdlib only: parsed before `.venv` exists);
- `local_models`: finding the user's real models without loading them;
- `job`: steps 2 to 4 (models, server, job), run with the `.venv` Python (`python -m dev.mainjob.job`).
"""
