"""The baselines, one small method class per module on :mod:`spuraug.engine`:
ERM, GroupDRO (Sagawa et al. 2020), JTT (Liu et al. 2021), DFR (Kirichenko et al. 2023)."""
