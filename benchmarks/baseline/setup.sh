#!/bin/sh
# benchmarks/delivery_rate.py's baseline: Postfix -> Dovecot LMTP -> Maildir with Debian's
# defaults, a hash map of the recipients, no milters, no policy service, no database.
# Argument: how many recipients (system users bench00, bench01, ...); the Dovecot drop-in
# (2.3 or 2.4 syntax) on standard input.
set -eu
cat > /etc/dovecot/conf.d/99-bare.conf
: > /etc/postfix/vmailbox
for n in $(seq 0 $(( $1 - 1 ))); do
    user=$(printf 'bench%02d' "$n")
    id "$user" >/dev/null 2>&1 || useradd -m "$user"
    echo "$user@example.internal OK" >> /etc/postfix/vmailbox
done
postmap /etc/postfix/vmailbox
postconf -e 'myhostname = bare.example.internal' 'mydestination = localhost' \
    'inet_interfaces = all' 'mynetworks = 127.0.0.0/8' \
    'virtual_mailbox_domains = example.internal' \
    'virtual_mailbox_maps = hash:/etc/postfix/vmailbox' \
    'virtual_transport = lmtp:unix:private/dovecot-lmtp'
doveconf -n >/dev/null
systemctl restart dovecot postfix
