#@ Fragment of /init (init.sh) for the tis-mmio transport: the agent drives QEMU's
#@ tpm-tis-device registers itself through /dev/mem, so the image holds no TPM module and
#@ nothing may load tpm_tis (it would own the register window). Finds the registers in the
#@ device tree and sets tis_addr, which init.sh passes to the agent as --tpm tis-mmio:ADDR.
#@ Must never guess an address: no node, or a reg it cannot translate, ends the boot with an
#@ EKATTEST-RESULT fail line. Every loop here is bounded by the size of a property.
if [ -d /sys/module/tpm_tis ]; then l=yes; else l=no; fi
echo "EKATTEST-STEP tpm_tis loaded=$l"
# hexof FILE: the bytes of FILE as one hex string.
hexof() { od -An -v -tx1 "$1" | tr -d ' \n'; }
# cellsof FILE DEFAULT: the one-cell number in FILE (#address-cells, #size-cells) or DEFAULT.
cellsof() { if [ -f "$1" ]; then echo $((0x$(hexof "$1"))); else echo "$2"; fi; }
# num HEX FIRST COUNT: COUNT big-endian 32-bit cells of HEX from cell FIRST, as a number.
num() {
  v=0
  k=0
  while [ "$k" -lt "$3" ]; do
    c=$(echo "$1" | cut -c$((($2 + k) * 8 + 1))-$((($2 + k) * 8 + 8)))
    [ ${#c} -eq 8 ] || return 1
    v=$(((v << 32) + 0x$c))
    k=$((k + 1))
  done
  echo "$v"
}
cd /proc/device-tree || {
  echo "EKATTEST-RESULT fail no /proc/device-tree: the kernel was not booted with a device tree"
  poweroff -f
}
node=
# One grep over every compatible (a fork per node costs seconds under TCG), then the exact
# string among the NUL-separated ones of each candidate.
for c in $(find . -name compatible -exec grep -l 'tcg,tpm-tis-mmio' {} +); do
  if tr '\0' '\n' <"$c" | grep -qx 'tcg,tpm-tis-mmio'; then
    node=${c%/compatible}
    break
  fi
done
if [ -z "$node" ] || [ ! -f "$node/reg" ]; then
  echo "EKATTEST-RESULT fail no device tree node compatible with tcg,tpm-tis-mmio (with a reg): start QEMU with -device tpm-tis-device"
  poweroff -f
fi
# reg is in the parent's address space; each ancestor's ranges maps its children's addresses
# to its own parent's (an empty ranges is the identity, a missing one a bus the CPU cannot
# address), up to the root, whose addresses are physical.
p=${node%/*}
a=$(num "$(hexof "$node/reg")" 0 "$(cellsof "$p/#address-cells" 2)")
while [ -n "$a" ] && [ "$p" != "." ]; do
  pp=${p%/*}
  ca=$(cellsof "$p/#address-cells" 2)
  cs=$(cellsof "$p/#size-cells" 1)
  pa=$(cellsof "$pp/#address-cells" 2)
  if [ ! -f "$p/ranges" ]; then
    a=
    break
  fi
  r=$(hexof "$p/ranges")
  n=$((ca + pa + cs))
  if [ -n "$r" ] && [ "$n" -gt 0 ]; then
    t=
    i=0
    while [ $(((i + 1) * n * 8)) -le ${#r} ]; do
      cb=$(num "$r" $((i * n)) "$ca")
      pb=$(num "$r" $((i * n + ca)) "$pa")
      sz=$(num "$r" $((i * n + ca + pa)) "$cs")
      if [ "$a" -ge "$cb" ] && [ "$a" -lt $((cb + sz)) ]; then
        t=$((a - cb + pb))
        break
      fi
      i=$((i + 1))
    done
    a=$t
  fi
  p=$pp
done
cd /
if [ -z "$a" ]; then
  echo "EKATTEST-RESULT fail cannot translate the reg of device tree node ${node#./} to a physical address"
  poweroff -f
fi
tis_addr=$(printf '0x%x' "$a")
echo "EKATTEST-STEP tis-mmio address=$tis_addr node=/${node#./}"
if [ ! -c /dev/mem ]; then
  echo "EKATTEST-RESULT fail no /dev/mem: the guest kernel lacks CONFIG_DEVMEM"
  poweroff -f
fi
