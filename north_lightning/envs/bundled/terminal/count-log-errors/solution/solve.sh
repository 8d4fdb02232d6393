#!/bin/bash
set -e
grep -c ERROR /app/logs/app.log > /app/error_count.txt
