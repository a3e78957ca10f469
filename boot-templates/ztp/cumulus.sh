#!/bin/bash
# CUMULUS-AUTOPROVISIONING
# ironboot: zero-touch provisioning for {{ machine.mac }} ({{ machine.hostname }}),
# {% if generation %}{{ generation.stream }} generation {{ generation.number }}{% else %}no generation: {{ reason }}{% endif %}.
# Cumulus Linux runs this once after installation (opt 239); it must hold the
# CUMULUS-AUTOPROVISIONING line above. It confirms the switch's boot to
# ironboot the way a booted server's cloud-init does. Every value below is
# shell-quoted by ironboot; use them through these variables.
set -eu
HOSTNAME={{ machine.hostname }}
SERVER={{ urls.server }}
echo "ironboot: provisioning $HOSTNAME"
{%- if generation %}
INSTANCE_ID={{ boot.instance_id }}
PHONE_HOME={{ urls.phone_home }}
for try in 1 2 3 4 5; do
    if wget -q -O - --post-data "instance_id=$INSTANCE_ID&hostname=$HOSTNAME" \
        "$PHONE_HOME"; then
        exit 0
    fi
    sleep 2
done
echo "ironboot: could not confirm to $SERVER" >&2
exit 1
{%- endif %}
