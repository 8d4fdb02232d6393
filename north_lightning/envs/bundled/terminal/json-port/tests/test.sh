#!/bin/bash
mkdir -p /logs/verifier
cd /tests
python3 -m pytest -q -rA -p no:cacheprovider /tests
if [ $? -eq 0 ]; then echo 1 > /logs/verifier/reward.txt; else echo 0 > /logs/verifier/reward.txt; fi
