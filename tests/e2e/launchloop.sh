# Many consecutive confidential launches in one L1, to count stalls: SNP and
# TDX, 1 and 2 vCPUs, every other group of four with a CPU-bound process on
# the other L1 core. Run it as the ad-hoc command of a nested session:
#
#   tests/e2e/run.sh --conf --shell-cmd "LOOPS=24 . \$E2E_DIR/launchloop.sh"
#
# (run.sh copies this file next to scenarios.sh). Prints one COUNT line per
# launch and a final "COUNTS ok=N bad=M of L"; exits non-zero if any launch
# did not end with the workload's marker line and status 3.
E2E_LIB=1 . "$E2E_DIR/scenarios.sh"
mkdir -p $IMAGES; cp $E2E_DIR/images/conf-snp.img $E2E_DIR/images/conf-tdx.img $IMAGES/
rm -rf $KBS_STATE; cp -a $CONF/kbs $KBS_STATE; kbs_start $KBS_STATE $KBS_ADDR || exit 1
meas() { "$KRUN_TEE" measure "$IMAGES/$1.img" --bundle "$BUNDLE" $3 | awk -v k="$2" '$1 == k { print $2 }'; }
kadmin $KBS_STATE $KBS_ADDR register --workload conf-snp --tee snp --measurement "$(meas conf-snp snp_measurement)" \
  --measurement "$(meas conf-snp snp_measurement '--cpus 2')" --resource default/krun-tee/conf-snp --allow-emulated >/dev/null || echo "REGISTER snp failed"
kadmin $KBS_STATE $KBS_ADDR register --workload conf-tdx --tee tdx --measurement "$(meas conf-tdx tdx_mrtd)" \
  --measurement "$(meas conf-tdx tdx_mrtd '--cpus 2')" --resource default/krun-tee/conf-tdx --allow-emulated >/dev/null || echo "REGISTER tdx failed"
N=${LOOPS:-24}
i=0 ok=0 bad=0
while [ $i -lt $N ]; do
  i=$((i+1))
  case $((i % 4)) in 1) img=conf-snp c=1 ;; 2) img=conf-tdx c=1 ;; 3) img=conf-snp c=2 ;; 0) img=conf-tdx c=2 ;; esac
  burn=""
  if [ $(( (i - 1) / 4 % 2 )) = 1 ]; then ( while :; do :; done ) & burn=$!; fi
  krun_conf count-$i $img --cpus $c
  [ -z "$burn" ] || kill $burn
  if [ "$rc" = 3 ] && grep -q '^krun-e2e-confidential' $WORK/count-$i.log; then ok=$((ok+1)); r=ok; else bad=$((bad+1)); r=BAD; fi
  echo "COUNT $i $img cpus=$c l1burn=${burn:+yes} rc=$rc secs=$secs $r"
  if [ "$r" != ok ]; then
    echo "  --- count-$i.log: the workload's line, if anywhere, and the last lines"
    grep -n 'krun-e2e-confidential' $WORK/count-$i.log | cat -v | sed 's/^/  @ /'
    tail -n 12 $WORK/count-$i.log | cat -v | sed 's/^/  | /'
  fi
done
echo "COUNTS ok=$ok bad=$bad of $N"
[ "$bad" = 0 ]
