#!/usr/bin/env bash
# Makes a development CA and the certificates a TLS cluster needs, with openssl:
#
#   tuning/make-certs.sh DIR [NODE_ID...]      (default ids: 1 2 3)
#
# DIR/ca.pem, ca.key                 the CA (keep ca.key off the nodes)
# DIR/node-N.pem, node-N.key         node N: serves the client ports (names localhost,
#                                    127.0.0.1 and $CERT_HOSTS) and its node links (names
#                                    node-N, which other nodes check)
# DIR/client.pem, client.key         a client certificate (for --tls-client-ca)
#
# CERT_HOSTS="db1.example.com 10.0.0.5" adds names or addresses to every node certificate.
# DAYS (default 825) sets how long certificates last.
#
# Rotation, with no connection dropped: write the new node-N.pem and node-N.key over the old
# ones (make them in a temporary DIR with the same CA, then `mv`, which is atomic), and send
# the node SIGHUP (`systemctl reload corekv` or `kill -HUP PID`). New handshakes use the new
# files; open connections keep theirs. A file that does not load is reported in the log and
# the old certificate stays in use. To change the CA, first give every node a CA file holding
# both the old and the new CA certificates (and SIGHUP them), then move to certificates of
# the new CA, then drop the old one.
set -euo pipefail
if [ $# -lt 1 ] || [ "$1" = "-h" ] || [ "$1" = "--help" ]; then
  sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'
  exit 0
fi
dir=$1
shift
ids=("$@")
[ ${#ids[@]} -gt 0 ] || ids=(1 2 3)
days=${DAYS:-825}
command -v openssl >/dev/null || { echo "make-certs.sh: needs openssl (apt-get install openssl)" >&2; exit 2; }
mkdir -p "$dir"
cd "$dir"
if [ ! -f ca.pem ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key \
    -out ca.pem -days "$days" -subj "/CN=corekv dev CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    2>/dev/null
  chmod 600 ca.key
fi

# make NAME SAN EXTENDED_KEY_USAGE
make() {
  local name=$1 san=$2 eku=$3
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$name.key" \
    -out "$name.csr" -subj "/CN=$name" 2>/dev/null
  printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=%s\nsubjectAltName=%s\n' \
    "$eku" "$san" >"$name.ext"
  openssl x509 -req -in "$name.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -out "$name.pem" \
    -days "$days" -extfile "$name.ext" 2>/dev/null
  rm -f "$name.csr" "$name.ext"
  chmod 600 "$name.key"
}

hosts="DNS:localhost,IP:127.0.0.1"
for h in ${CERT_HOSTS:-}; do
  if [[ $h =~ ^[0-9.]+$ || $h == *:* ]]; then hosts="$hosts,IP:$h"; else hosts="$hosts,DNS:$h"; fi
done
for id in "${ids[@]}"; do
  make "node-$id" "DNS:node-$id,$hosts" "serverAuth,clientAuth"
done
make client "DNS:client" "clientAuth"
echo "made in $dir: ca.pem, $(printf 'node-%s.pem ' "${ids[@]}")client.pem (and their keys)"
