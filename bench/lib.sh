# Shell helpers the bench scripts source.

# median of the numbers in $1 (separated by spaces or newlines)
median() { tr ' ' '\n' <<<"$1" | grep . | sort -g | awk '{v[NR]=$1} END {print (NR%2 ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2)}'; }
