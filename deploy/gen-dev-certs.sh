#!/usr/bin/env bash
# Make a DEVELOPMENT certificate authority and node certificates for nacosd with the
# openssl CLI. Not for production: the CA key sits unencrypted next to the
# certificates. See docs/SECURITY.md for what each file is for.
#
#   deploy/gen-dev-certs.sh OUT_DIR [NODE_NAME ...]     (default names: n1 n2 n3)
#   deploy/gen-dev-certs.sh --client OUT_DIR USER ...    (client certificates)
#
# In OUT_DIR:
#   ca.pem, ca-key.pem          the cluster CA (made once; reused if present, so a
#                               second run issues fresh node certificates under the
#                               same CA, which is how to rehearse a rotation)
#   NAME.pem, NAME-key.pem      one certificate per node, for the peer port (mutual
#                               TLS: server and client authentication) and the client
#                               and HTTP ports. Subject alternative names: NAME,
#                               localhost, 127.0.0.1, ::1 and $EXTRA_SANS
#                               (e.g. EXTRA_SANS="DNS:*.nacosd.default.svc.cluster.local").
#
# With --client, OUT_DIR's CA is a client CA (for nacosd's --client-ca; use another
# OUT_DIR than the nodes', so that the two trust roots stay apart) and each
# USER.pem, USER-key.pem is a client certificate (client authentication only, subject
# CN=USER, no alternative names) that logs in as the nacosd user USER.
#
# Environment: DAYS (validity of node certificates, default 365), CA_DAYS (3650).
set -euo pipefail

client=0
if [ "${1:-}" = "--client" ]; then
    client=1
    shift
fi
if [ $# -lt 1 ] || { [ $client = 1 ] && [ $# -lt 2 ]; }; then
    echo "usage: $0 OUT_DIR [NODE_NAME ...]" >&2
    echo "       $0 --client OUT_DIR USER ..." >&2
    exit 2
fi
out=$1
shift
names=("$@")
[ ${#names[@]} -gt 0 ] || names=(n1 n2 n3)
kind="nacosd development CA"
[ $client = 0 ] || kind="nacosd development client CA"
days=${DAYS:-365}
ca_days=${CA_DAYS:-3650}
mkdir -p "$out"
umask 077

if [ ! -f "$out/ca.pem" ] || [ ! -f "$out/ca-key.pem" ]; then
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -keyout "$out/ca-key.pem" -out "$out/ca.pem" -days "$ca_days" \
        -subj "/CN=$kind $(date +%s)" \
        -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
fi

for name in "${names[@]}"; do
    ext=$(mktemp)
    if [ $client = 1 ]; then
        cat >"$ext" <<EXT
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=clientAuth
EXT
    else
        sans="DNS:$name,DNS:localhost,IP:127.0.0.1,IP:::1"
        [ -z "${EXTRA_SANS:-}" ] || sans="$sans,$EXTRA_SANS"
        cat >"$ext" <<EXT
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth,clientAuth
subjectAltName=$sans
EXT
    fi
    # Written to temporary names and renamed, as a secret mount does: a node that
    # reloads in between sees either the old pair or the new one.
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -keyout "$out/.$name-key.pem" -out "$out/.$name.csr" -subj "/CN=$name" 2>/dev/null
    openssl x509 -req -in "$out/.$name.csr" -CA "$out/ca.pem" -CAkey "$out/ca-key.pem" \
        -CAcreateserial -out "$out/.$name.pem" -days "$days" -extfile "$ext" 2>/dev/null
    rm -f "$ext" "$out/.$name.csr"
    mv "$out/.$name-key.pem" "$out/$name-key.pem"
    mv "$out/.$name.pem" "$out/$name.pem"
done
chmod 644 "$out"/*.pem
chmod 600 "$out"/*-key.pem
echo "wrote $out: ca.pem and certificates for ${names[*]}"
