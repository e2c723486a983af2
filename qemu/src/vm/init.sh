#!/bin/sh
# /init of the ekattest VM-fleet guest (qemu/src/vm/image.rs): brings up eth0, loads the
# TPM and network modules, runs the agent once and prints EKATTEST-* markers on the console,
# then powers off. The host reads the markers from the serial console log.
#@ A template, rendered by image.rs (render_init): @TPM_SETUP@ becomes init-kernel.sh (wait
#@ for the kernel driver's TPM device) or init-tis-mmio.sh (no TPM module; find the TIS
#@ registers in the device tree), @AGENT_ARGS@ the agent's extra arguments. Lines starting
#@ with #@ are dropped, so a kernel board's /init, and with it its image cache key, is the
#@ same as before the tis-mmio transport existed: do not change the other lines lightly.
export PATH=/bin
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t tmpfs tmpfs /tmp
echo "EKATTEST-STEP init uptime=$(cut -d' ' -f1 /proc/uptime)"
for m in $(cat /etc/modules.order); do
  insmod "/lib/modules/$m.ko" || echo "EKATTEST-STEP insmod $m failed"
done
t=$(sed -n 's/.*fleet\.time=\([0-9]*\).*/\1/p' /proc/cmdline)
[ -n "$t" ] && date -s "@$t" >/dev/null
ip link set lo up
if ! { ip link set eth0 up && ip addr add 10.0.2.15/24 dev eth0 && ip route add default via 10.0.2.2; }; then
  echo "EKATTEST-RESULT fail network: eth0 did not come up"
  poweroff -f
fi
@TPM_SETUP@
echo "EKATTEST-STEP agent uptime=$(cut -d' ' -f1 /proc/uptime)"
/bin/ekattest-agent run --config /etc/ekattest/agent.yaml --once --timeout 90s@AGENT_ARGS@ >/tmp/agent.log 2>&1 &
pid=$!
hwm=0
while kill -0 $pid 2>/dev/null; do
  v=$(sed -n 's/^VmHWM:[^0-9]*\([0-9]*\).*/\1/p' /proc/$pid/status 2>/dev/null)
  [ -n "$v" ] && hwm=$v
  sleep 0.1
done
wait $pid
rc=$?
echo "EKATTEST-AGENT-LOG-BEGIN"
cat /tmp/agent.log
echo "EKATTEST-AGENT-LOG-END"
id=$(grep -o 'spiffe://[^ ,"]*' /tmp/agent.log | head -n 1)
up=$(cut -d' ' -f1 /proc/uptime)
if [ $rc -eq 0 ] && [ -n "$id" ]; then
  echo "EKATTEST-RESULT ok $id uptime=$up rss_kb=$hwm"
else
  echo "EKATTEST-RESULT fail agent exited with status $rc uptime=$up rss_kb=$hwm"
fi
poweroff -f
