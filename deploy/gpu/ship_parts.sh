#!/bin/sh
# Copy results of a GPU training run to $OUT within one call's limits (at most 8 files, 64 MiB in all):
# SHA256SUMS, results-small.tar.gz (first call only) and as many 15 MiB weight parts, from index FIRST, as fit
# in 62 MiB. Prints the command for the next call when parts remain.
#   sh deploy/gpu/ship_parts.sh /tmp/parts "$OUT" 0     # first call (run.sh does this)
#   sh deploy/gpu/ship_parts.sh /tmp/parts "$OUT" N     # next call, N as printed
set -eu
parts=$1; out=$2; first=${3:-0}
limit=$((62 * 1024 * 1024)); files=1
cp "$parts/SHA256SUMS" "$out/"
used=$(stat -c %s "$parts/SHA256SUMS")
if [ "$first" -eq 0 ]; then
  cp "$parts/results-small.tar.gz" "$out/"
  used=$((used + $(stat -c %s "$parts/results-small.tar.gz"))); files=2
fi
i=$first
while :; do
  part=$(printf '%s/weights.tar.part%02d' "$parts" "$i")
  [ -f "$part" ] || break
  size=$(stat -c %s "$part")
  [ $((used + size)) -le "$limit" ] && [ "$files" -lt 8 ] || break
  cp "$part" "$out/"; used=$((used + size)); files=$((files + 1)); i=$((i + 1))
done
total=$(ls "$parts"/weights.tar.part* 2>/dev/null | wc -l)
echo "shipped weight parts $first..$((i - 1)) of $total ($((used / 1048576)) MiB)"
if [ "$i" -lt "$total" ]; then
  echo "NEXT CALL: sh deploy/gpu/ship_parts.sh $parts \"\$OUT\" $i"
else
  echo "all parts shipped; reassemble: cat weights.tar.part* > weights.tar && sha256sum -c SHA256SUMS"
fi
