#@ Fragment of /init (init.sh) for the kernel transport: waits up to 30 s for the device the
#@ kernel's tpm_tis creates (@TPM@: the board's [tpm] device). No other comments here: they
#@ would change the kernel boards' /init and their image cache key.
tpm=@TPM@
i=0
while [ ! -e "$tpm" ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done
if [ ! -e "$tpm" ]; then
  dmesg | grep -i tpm
  echo "EKATTEST-RESULT fail no $tpm: tpm_tis did not bind the TPM"
  poweroff -f
fi
