#!/bin/bash
set -e
awk -F, 'NR > 1 { total += $2 * $3 } END { print total }' /app/sales.csv > /app/total.txt
