#!/bin/bash
# CUMULUS-AUTOPROVISIONING
# ironboot: zero-touch provisioning for {{ machine.mac }} ({{ machine.hostname }}),
# {% if generation %}{{ generation.stream }} generation {{ generation.number }}{% else %}no generation: {{ reason }}{% endif %}.
# Cumulus Linux runs this once after installation (opt 239); it must hold the
# CUMULUS-AUTOPROVISIONING line above. It confirms the switch's boot to
# ironboot the way a booted server's cloud-init does.
set -eu
echo "ironboot: provisioning {{ machine.hostname }}"
{%- if generation %}
for try in 1 2 3 4 5; do
    if wget -q -O - --post-data "instance_id={{ boot.instance_id }}&hostname={{ machine.hostname }}" \
        "{{ urls.phone_home }}"; then
        exit 0
    fi
    sleep 2
done
echo "ironboot: could not confirm to {{ urls.server }}" >&2
exit 1
{%- endif %}
