#!/bin/sh
# Writes the broker's password file from FLOPS_MQTT_PASSWORD (hashed by mosquitto_passwd),
# then starts Mosquitto with anonymous access off. No default password: it must be set.
set -eu
: "${FLOPS_MQTT_PASSWORD:?set FLOPS_MQTT_PASSWORD}"
user="${FLOPS_MQTT_USERNAME:-flops}"
umask 077
mkdir -p /mosquitto/data
rm -f /mosquitto/data/passwd
touch /mosquitto/data/passwd
mosquitto_passwd -b /mosquitto/data/passwd "$user" "$FLOPS_MQTT_PASSWORD"
unset FLOPS_MQTT_PASSWORD
if id mosquitto >/dev/null 2>&1; then chown -R mosquitto:mosquitto /mosquitto/data; fi
exec mosquitto -c "${FLOPS_MOSQUITTO_CONF:-/flops/mosquitto.conf}"
