#!/usr/bin/env bash
# Generate a throw-away Consul-Connect-shaped PKI for local development and tests.
#
# Usage: certs-dev/gen.sh OUTDIR
#        certs-dev/gen.sh --leaf OUTDIR NAME SERVICE SECONDS
#   The second form adds one leaf NAME.pem/NAME.key for SERVICE to a set made by the
#   first, signed by its ca, valid from a minute ago until SECONDS from now (tests of
#   certificate expiry).
#
# Everything is EC P-256 / SHA-256. Certificates mirror what Consul's built-in
# CA issues: a root with a `spiffe://<uuid>.consul` URI SAN and service leaves
# with exactly one `spiffe://<td>/ns/default/dc/dc1/svc/<name>` URI SAN.
# Needs only the `openssl` CLI (tested with OpenSSL 3.0 on Debian 12).
set -Eeuo pipefail

die() { echo "gen.sh: error: $*" >&2; exit 1; }

MODE=set
if [[ ${1:-} == --leaf ]]; then
    [[ $# -eq 5 && $5 =~ ^[0-9]+$ ]] || die "usage: $0 --leaf OUTDIR NAME SERVICE SECONDS"
    MODE=leaf LEAF_NAME=$3 LEAF_SERVICE=$4 LEAF_SECONDS=$5
    set -- "$2"
fi
[[ $# -eq 1 && -n "$1" ]] || die "usage: $0 OUTDIR | --leaf OUTDIR NAME SERVICE SECONDS"
command -v openssl >/dev/null 2>&1 || die "openssl not found in PATH"

OUTDIR=$1
mkdir -p -- "$OUTDIR" || die "cannot create $OUTDIR"
OUTDIR=$(cd -- "$OUTDIR" && pwd) || die "cannot enter $OUTDIR"

# Build everything in a scratch dir, then copy into OUTDIR only once the whole
# set has been generated and verified (a failed run never leaves a mixed set).
WORK=$(mktemp -d "${TMPDIR:-/tmp}/certs-dev.XXXXXX") || die "mktemp failed"
trap 'rm -rf -- "$WORK"' EXIT
cd "$WORK"
mkdir -p tmp
# Chatty openssl subcommands write stderr to tmp/stderr; show it on failure.
on_err() {
    [[ $2 == *tmp/stderr* && -s tmp/stderr ]] && sed 's/^/  openssl: /' tmp/stderr >&2
    die "command failed (line $1): $2"
}
trap 'on_err "$LINENO" "$BASH_COMMAND"' ERR

new_uuid() {
    if [[ -r /proc/sys/kernel/random/uuid ]]; then
        cat /proc/sys/kernel/random/uuid
    else  # fallback: random v4 uuid from openssl
        local h; h=$(openssl rand -hex 16)
        printf '%s-%s-4%s-%x%s-%s\n' "${h:0:8}" "${h:8:4}" "${h:13:3}" \
            $(( (0x${h:16:1} & 3) | 8 )) "${h:17:3}" "${h:20:12}"
    fi
}

TD="$(new_uuid | tr 'A-Z' 'a-z').consul"
OTHER_TD="$(new_uuid | tr 'A-Z' 'a-z').consul"

spiffe_svc() { echo "URI:spiffe://$1/ns/default/dc/dc1/svc/$2"; }   # TD NAME

serial() { echo "0x$(openssl rand -hex 16)"; }

genkey() {  # NAME -> NAME.key
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1.key" 2>tmp/stderr
    chmod 600 "$1.key"
}

# Minimal config for `openssl req` so the system openssl.cnf (and whatever
# default extensions it adds) never leaks into our certificates.
cat > tmp/req.cnf <<'EOF'
[ req ]
distinguished_name = req_dn
prompt             = no
utf8               = yes
[ req_dn ]
CN = placeholder
EOF

# ---------------------------------------------------------------------------
# Roots
# ---------------------------------------------------------------------------
mkroot() {  # NAME CN TD
    local name=$1 cn=$2 td=$3
    genkey "$name"
    # `openssl req` (3.0) has no -extfile: append the section to a req config.
    {
        cat tmp/req.cnf
        cat <<EOF
[ root ]
basicConstraints       = critical, CA:TRUE
keyUsage               = critical, keyCertSign, cRLSign, digitalSignature
subjectKeyIdentifier   = hash
authorityKeyIdentifier = keyid:always
subjectAltName         = URI:spiffe://$td
EOF
    } > "tmp/$name.cnf"
    openssl req -new -x509 -config "tmp/$name.cnf" -key "$name.key" -subj "/CN=$cn" \
        -sha256 -days 3650 -set_serial "$(serial)" -extensions root -out "$name.pem"
}

mkroot ca       "Consul CA 7" "$TD"
mkroot ca2      "Consul CA 8" "$TD"        # rotation: same trust domain
mkroot other-ca "Consul CA 9" "$OTHER_TD"  # foreign cluster

# ---------------------------------------------------------------------------
# Leaves
# ---------------------------------------------------------------------------
# write_leaf_ext FILE SAN EKU BASIC_CONSTRAINTS
write_leaf_ext() {
    cat > "$1" <<EOF
[ leaf ]
basicConstraints       = critical, $4
keyUsage               = critical, digitalSignature, keyEncipherment, dataEncipherment, keyAgreement
extendedKeyUsage       = $3
subjectKeyIdentifier   = hash
authorityKeyIdentifier = keyid:always
subjectAltName         = $2
EOF
}

# mkleaf OUT ISSUER CN SAN [EKU] [BC]
#   Leaf valid for 365 days from now, signed with `openssl x509 -req`.
mkleaf() {
    local out=$1 issuer=$2 cn=$3 san=$4
    local eku=${5:-serverAuth, clientAuth} bc=${6:-CA:FALSE}
    genkey "$out"
    write_leaf_ext "tmp/$out.ext" "$san" "$eku" "$bc"
    openssl req -new -config tmp/req.cnf -key "$out.key" -subj "/CN=$cn" -out "tmp/$out.csr"
    openssl x509 -req -in "tmp/$out.csr" -CA "$issuer.pem" -CAkey "$issuer.key" \
        -set_serial "$(serial)" -sha256 -days 365 \
        -extfile "tmp/$out.ext" -extensions leaf -out "$out.pem" 2>tmp/stderr
}

# mkleaf_dated OUT ISSUER CN SAN STARTDATE ENDDATE
#   OpenSSL 3.0's `x509 -req` has no -not_before/-not_after (added in 3.4),
#   so explicit dates go through `openssl ca` with a throw-away database.
mkleaf_dated() {
    local out=$1 issuer=$2 cn=$3 san=$4 start=$5 end=$6
    local db="tmp/ca-db-$out"
    genkey "$out"
    write_leaf_ext "tmp/$out.ext" "$san" "serverAuth, clientAuth" "CA:FALSE"
    openssl req -new -config tmp/req.cnf -key "$out.key" -subj "/CN=$cn" -out "tmp/$out.csr"
    mkdir -p "$db/new"
    : > "$db/index.txt"
    # `openssl ca` needs a serial file (3.0 fails without one even when given
    # -rand_serial), so seed it with a random 128-bit serial instead.
    openssl rand -hex 16 > "$db/serial"
    cat > "$db/ca.cnf" <<EOF
[ ca ]
default_ca = dev_ca
[ dev_ca ]
database        = $db/index.txt
new_certs_dir   = $db/new
serial          = $db/serial
certificate     = $issuer.pem
private_key     = $issuer.key
default_md      = sha256
policy          = policy_cn
unique_subject  = no
copy_extensions = none
email_in_dn     = no
[ policy_cn ]
commonName = supplied
EOF
    openssl ca -batch -notext -config "$db/ca.cnf" \
        -startdate "$start" -enddate "$end" \
        -extfile "tmp/$out.ext" -extensions leaf \
        -in "tmp/$out.csr" -out "$out.pem" 2>tmp/stderr
}

if [[ $MODE == leaf ]]; then
    cp -- "$OUTDIR/ca.pem" "$OUTDIR/ca.key" .
    TD=$(cat "$OUTDIR/trust-domain.txt")
    utc() { date -u -d "@$1" +%Y%m%d%H%M%SZ; }
    now=$(date +%s)
    mkleaf_dated "$LEAF_NAME" ca "$LEAF_SERVICE" "$(spiffe_svc "$TD" "$LEAF_SERVICE")" \
        "$(utc $((now - 60)))" "$(utc $((now + LEAF_SECONDS)))"
    openssl verify -CAfile ca.pem "$LEAF_NAME.pem" >/dev/null 2>&1 || die "self-check failed: $LEAF_NAME.pem does not verify"
    cp -f -- "$LEAF_NAME.pem" "$LEAF_NAME.key" "$OUTDIR/"
    chmod 600 "$OUTDIR/$LEAF_NAME.key"
    exit 0
fi

# Good leaves
mkleaf backup-agent     ca       backup-agent  "$(spiffe_svc "$TD" backup-agent)"
mkleaf storage          ca       storage       "$(spiffe_svc "$TD" storage)"
mkleaf restore-agent    ca       restore-agent "$(spiffe_svc "$TD" restore-agent)"
mkleaf backup-agent-ca2 ca2      backup-agent  "$(spiffe_svc "$TD" backup-agent)"
mkleaf other-backup-agent other-ca backup-agent "$(spiffe_svc "$OTHER_TD" backup-agent)"

# Negative leaves
mkleaf wrong-td         ca backup-agent "$(spiffe_svc "$OTHER_TD" backup-agent)"
mkleaf_dated expired       ca backup-agent "$(spiffe_svc "$TD" backup-agent)" 20200101000000Z 20210101000000Z
mkleaf_dated not-yet-valid ca backup-agent "$(spiffe_svc "$TD" backup-agent)" 20990101000000Z 21000101000000Z
# RFC 5280's "no well-defined expiration date": valid, and past what a timer can hold.
mkleaf_dated no-expiry     ca backup-agent "$(spiffe_svc "$TD" backup-agent)" "$(date -u -d '-1 day' +%Y%m%d%H%M%SZ)" 99991231235959Z
mkleaf no-client-auth   ca backup-agent "$(spiffe_svc "$TD" backup-agent)" "serverAuth"
mkleaf no-server-auth   ca storage      "$(spiffe_svc "$TD" storage)"      "clientAuth"
mkleaf two-uris         ca backup-agent "$(spiffe_svc "$TD" backup-agent), $(spiffe_svc "$TD" restore-agent)"
mkleaf no-uri           ca backup-agent "DNS:backup-agent"
mkleaf ca-true-leaf     ca backup-agent "$(spiffe_svc "$TD" backup-agent)" "serverAuth, clientAuth" "CA:TRUE"
mkleaf storage-impostor ca billing      "$(spiffe_svc "$TD" billing)"

# ---------------------------------------------------------------------------
# Intermediate chain: ca -> int-ca -> storage leaf
# ---------------------------------------------------------------------------
genkey int-ca
cat > tmp/int-ca.ext <<EOF
[ int ]
basicConstraints       = critical, CA:TRUE, pathlen:0
keyUsage               = critical, keyCertSign, cRLSign, digitalSignature
subjectKeyIdentifier   = hash
authorityKeyIdentifier = keyid:always
subjectAltName         = URI:spiffe://$TD
EOF
openssl req -new -config tmp/req.cnf -key int-ca.key -subj "/CN=Consul Intermediate CA 7" -out tmp/int-ca.csr
openssl x509 -req -in tmp/int-ca.csr -CA ca.pem -CAkey ca.key \
    -set_serial "$(serial)" -sha256 -days 1825 \
    -extfile tmp/int-ca.ext -extensions int -out int-ca.pem 2>tmp/stderr

mkleaf int-storage-leaf-only int-ca storage "$(spiffe_svc "$TD" storage)"
mv int-storage-leaf-only.key int-storage.key
cat int-storage-leaf-only.pem int-ca.pem > int-storage.pem

# ---------------------------------------------------------------------------
# Bundles and trust-domain files
# ---------------------------------------------------------------------------
cat ca.pem ca2.pem > roots.pem
printf '%s\n' "$TD" > trust-domain.txt
printf '%s\n' "$OTHER_TD" > other-trust-domain.txt

# ---------------------------------------------------------------------------
# Sanity checks (cheap): catch breakage before touching OUTDIR.
# ---------------------------------------------------------------------------
check() {  # description, command...
    local what=$1; shift
    "$@" >/dev/null 2>&1 || die "self-check failed: $what"
}
check "storage verifies against ca"  openssl verify -CAfile ca.pem storage.pem
check "backup-agent verifies"        openssl verify -CAfile ca.pem backup-agent.pem
check "backup-agent-ca2 via roots"   openssl verify -CAfile roots.pem backup-agent-ca2.pem
check "other-backup-agent verifies"  openssl verify -CAfile other-ca.pem other-backup-agent.pem
check "int-storage chain verifies"   openssl verify -CAfile ca.pem -untrusted int-ca.pem int-storage-leaf-only.pem
if openssl verify -CAfile ca.pem expired.pem >/dev/null 2>&1; then
    die "self-check failed: expired.pem unexpectedly verifies"
fi

for f in *.pem *.key *.txt; do
    cp -f -- "$f" "$OUTDIR/$f"
    if [[ $f == *.key ]]; then chmod 600 "$OUTDIR/$f"; fi
done
echo "gen.sh: wrote $(ls *.pem *.key *.txt | wc -l) files to $OUTDIR (trust domain $TD)"
