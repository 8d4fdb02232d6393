#!/bin/bash
set -e
cd /app/repo
git add notes.txt
git commit -q -m "add notes"
