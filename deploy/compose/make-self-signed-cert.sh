#!/usr/bin/env bash
# A self-signed certificate for trying the compose deployment out, written where nginx
# reads it: certs/fullchain.pem and certs/privkey.pem beside this script.
#
#   ./make-self-signed-cert.sh [HOST ...]     default: localhost (127.0.0.1 is always added)
#   DAYS=90 ./make-self-signed-cert.sh hearth.example.org
#   FORCE=1 ./make-self-signed-cert.sh ...    replace an existing pair
#
# Clients must be told to trust it (curl --cacert certs/fullchain.pem; the OpenAI SDK:
# SSL_CERT_FILE=certs/fullchain.pem). In production put your CA's chain and key there
# under the same names instead.
set -euo pipefail
cd "$(dirname "$0")"

hosts=("$@")
((${#hosts[@]})) || hosts=(localhost)
days="${DAYS:-30}"
out=certs

if [[ -e "$out/privkey.pem" && -z "${FORCE:-}" ]]; then
  echo "$out/privkey.pem exists; FORCE=1 $0 $* to replace it" >&2
  exit 1
fi

san=""
for h in "${hosts[@]}"; do
  san+="DNS:$h,"
done
san+="IP:127.0.0.1"

mkdir -p "$out"
umask 077
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
  -days "$days" -subj "/CN=${hosts[0]}" \
  -addext "subjectAltName=$san" \
  -addext "basicConstraints=critical,CA:FALSE" \
  -addext "keyUsage=critical,digitalSignature" \
  -addext "extendedKeyUsage=serverAuth" \
  -keyout "$out/privkey.pem" -out "$out/fullchain.pem"
chmod 644 "$out/fullchain.pem"
echo "Wrote $out/fullchain.pem and $out/privkey.pem for ${hosts[*]} (self-signed, $days days)."
