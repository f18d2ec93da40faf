"""Tools for the converter from the older IPAdapter Plus pack's workflows (`ipadapter_core/migration`).

- `ours_table`: writes and checks the converter's static table of this pack's node inputs (needs the host);
- `fixtures`: workflows in the older pack's UI and API formats, written from its node table, for the tests.
"""
