# shellcheck shell=bash
# Inputs of the e2e harness, sourced by run.sh: the guest binaries and
# initrd, the plain test disk images and the confidential inputs (LUKS2
# images registered with a dev KBS on this host, tampered variants). Every
# function works in run.sh's variables ($root, $here, $work, $e2e, ...).

# gobuild NAME PKG: a static binary in $work/bin.
gobuild() { (cd "$root" && go build -trimpath -buildvcs=false -ldflags "-s -w" -o "$work/bin/$1" "$2"); }

# build_binaries: the guest kernel path ($vmlinux), the init and test tools,
# krun-tee ($krun_tee, built when missing), the guest initrd; copies what
# the scenarios need to $e2e.
build_binaries() {
	vmlinux=$("$root/fw-sev/build-kernel.sh" --print-path 2>/dev/null) || vmlinux=$("$root/fw-sev/build-kernel.sh" | tail -n 1)
	mkdir -p "$work/bin" "$e2e/images"
	export CGO_ENABLED=0 GOFLAGS=${GOFLAGS:--mod=mod}
	gobuild init ./init
	gobuild mkinitrd ./init/mkinitrd
	gobuild mkconfig ./tests/e2e/mkconfig
	gobuild vsockping ./tests/e2e/guest
	gobuild imgtool ./tests/e2e/imgtool
	gobuild ociarchive ./tests/e2e/ociarchive
	if [ -z "$krun_tee" ]; then
		krun_tee=$root/bin/krun-tee
		if [ ! -x "$krun_tee" ]; then
			log "bin/krun-tee missing: building it"
			krun_tee=$work/bin/krun-tee
			# Not fatal: the QEMU scenarios still validate kernel, init and images,
			# and the krun-tee ones then report "no krun-tee binary".
			gobuild krun-tee ./cmd/krun-tee || { log "building krun-tee failed"; krun_tee=""; }
		fi
	fi
	cp "$vmlinux" "$e2e/vmlinux"
	if [ -n "$krun_tee" ]; then cp "$krun_tee" "$e2e/krun-tee"; fi
	cp "$here/scenarios.sh" "$here/launchloop.sh" "$e2e/"
	"$work/bin/mkinitrd" -o "$e2e/initrd.cpio" -init "$work/bin/init"
	log "$(since)s: binaries and guest initrd ready"
}

# mkimage NAME [mkconfig args] -- CMD...: a plain ext4 test image from the
# base rootfs; no args after NAME = no workload config.
mkimage() {
	local name=$1 dir=$work/rootfs-$1
	shift
	cp -a "$base" "$dir"
	[ $# -eq 0 ] || "$work/bin/mkconfig" -o "$dir/.krun_config.json" "$@"
	mke2fs -q -F -t ext4 -b 4096 -L "$name" -d "$dir" "$e2e/images/$name.img" 16M
	rm -rf "$dir"
}

# make_plain_images: the busybox base rootfs ($base) and the plain test
# disk images (plain ext4, no LUKS).
make_plain_images() {
	busybox=$(command -v busybox)
	base=$work/rootfs-base
	mkdir -p "$base"/{bin,usr/bin,proc,sys,dev,run,tmp,data}
	cp "$busybox" "$base/bin/busybox"
	for applet in $("$busybox" --list); do
		[ "$applet" = busybox ] || ln -sf busybox "$base/bin/$applet"
	done
	cp "$work/bin/vsockping" "$base/usr/bin/vsockping"
	local token
	token="persist-$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')"
	echo "PERSIST_TOKEN=$token" >"$e2e/images/token.sh"
	mkimage echo -env PATH=/bin:/usr/bin -- sh -c 'echo krun-e2e-hello from $(uname -sr) at $(cut -d" " -f1 /proc/uptime)'
	mkimage exit7 -env PATH=/bin:/usr/bin -- sh -c 'echo about to exit 7; exit 7'
	# First boot writes the token; the second finds it and checks that the
	# filesystem was left clean (no journal recovery at mount).
	mkimage persist -env PATH=/bin:/usr/bin -env "TOKEN=$token" -- sh -c \
		'if [ -f /data/mark ]; then c=clean; dmesg | grep -q "EXT4-fs.*recover" && c=unclean; echo "found $(cat /data/mark) $c"; else echo "$TOKEN" > /data/mark; echo "wrote $TOKEN"; fi'
	mkimage vsock -env PATH=/bin:/usr/bin -- vsockping -port 1234 krun-vsock-ping
	# Also the timer the VMM presents: the TSC-deadline LAPIC timer, so the
	# kernel never calibrates its LAPIC timer against the PIT (see vmm.EnableTSCDeadline).
	mkimage cpus -env PATH=/bin:/usr/bin -- sh -c 'n=$(grep -c ^processor /proc/cpuinfo); d=$(grep -c -w tsc_deadline_timer /proc/cpuinfo); echo cpus=$n nproc=$(nproc) tsc_deadline=$d; test "$n" = 2 && test "$d" = 2'
	mkimage user -env PATH=/bin:/usr/bin -env FOO=bar -user 1000:1000 -workdir /tmp -- sh -c 'echo uid=$(id -u):$(id -g) cwd=$(pwd) env=$FOO'
	mkimage orphans -env PATH=/bin:/usr/bin -- sh -c 'sleep 1000 & echo left an orphan; exit 5'
	mkimage notfound -env PATH=/bin:/usr/bin -- no-such-command
	mkimage noconfig
	log "$(since)s: test images ready ($(du -sh "$e2e/images" | cut -f1))"
}

kbs_pid="" kbs_addr=""
# host_kbs DIR: a dev KBS on a free loopback port of this host; sets
# kbs_addr from the address file the KBS writes once it accepts connections.
host_kbs() {
	rm -f "$1.addr"
	"$krun_tee" kbs serve --dev --listen 127.0.0.1:0 --state "$1" --addr-file "$1.addr" >"$1.log" 2>&1 &
	kbs_pid=$!
	for _ in $(seq 1 600); do
		if [ -s "$1.addr" ]; then
			kbs_addr=$(cat "$1.addr")
			return 0
		fi
		kill -0 "$kbs_pid" 2>/dev/null || break
		sleep 0.1
	done
	log "dev KBS in $1 did not start: $(tail -n 3 "$1.log")"
	return 1
}
host_kbs_stop() {
	[ -z "$kbs_pid" ] || { kill "$kbs_pid" 2>/dev/null; wait "$kbs_pid" 2>/dev/null || true; }
	kbs_pid=""
}

# conf_prepare: the confidential inputs, built here because L1 has no
# mke2fs; registration happens here too, against a dev KBS on this host's
# loopback whose state directory (CA, admin key, emulated root, bolt store)
# L1 then serves from 127.0.0.1:8443. On failure it returns 1 with the
# reason in $conf_skip: the plain scenarios still run, the confidential ones
# then FAIL with the reason.
conf_prepare() {
	[ -n "$krun_tee" ] || { conf_skip="no krun-tee binary"; return 1; }
	conf_bundle || return 1
	# The foreign KBS's state: its own CA, admin key and roots.
	host_kbs "$conf/kbs2" || { conf_skip="second dev KBS did not start"; return 1; }
	host_kbs_stop
	host_kbs "$conf/kbs" || { conf_skip="dev KBS did not start"; return 1; }
	conf_images || return 1
	host_kbs_stop
	conf_tampered
}

# conf_bundle: the firmware the guests boot: the shim (assembled from this
# tree unless $KRUN_TEE_SHIM names one), this run's kernel and this run's
# initrd, so the registered measurements match what boots; and a bundle
# with a modified kernel, and an untrusted emulated root.
conf_bundle() {
	mkdir -p "$conf/bundle" "$conf/bundle-kernel"
	if [ -n "${KRUN_TEE_SHIM:-}" ]; then
		cp "$KRUN_TEE_SHIM" "$conf/bundle/shim.bin" || { conf_skip="cannot copy \$KRUN_TEE_SHIM"; return 1; }
	elif ! "$root/fw-sev/build-bundle.sh" --shim-only --out "$conf/bundle" >"$work/shim.log" 2>&1; then
		conf_skip="building the boot shim failed: $(tail -n 1 "$work/shim.log")"
		return 1
	fi
	cp "$vmlinux" "$conf/bundle/vmlinux"
	cp "$e2e/initrd.cpio" "$conf/bundle/initrd.cpio"
	cp "$conf/bundle/shim.bin" "$conf/bundle/initrd.cpio" "$conf/bundle-kernel/"
	"$work/bin/imgtool" flip-banner "$vmlinux" "$conf/bundle-kernel/vmlinux" || { conf_skip="cannot make the modified kernel"; return 1; }
	"$krun_tee" attest emulated-root init --dir "$conf/other-root" >/dev/null || { conf_skip="cannot make the untrusted emulated root"; return 1; }
}

# conf_images: the LUKS2 images, registered with the dev KBS at $kbs_addr
# (conf-snp by mkimage --admin-key, conf-tdx by kbs admin register --image).
# All are dm-verity images (mkimage's default) but conf-none (--integrity
# none); conf-old is an earlier build of conf-snp, never booted: the source
# of the rolled-back block (conf_tampered).
conf_images() {
	local admin=(--kbs "https://$kbs_addr" --ca "$conf/kbs/ca.pem" --admin-key "$conf/kbs/admin.key" --subject e2e-host)
	local cmd='echo krun-e2e-confidential tee=$(grep -o "krun.tee=[a-z-]*" /proc/cmdline | cut -d= -f2) root=$(awk "\$2 == \"/\" { r = \$1 } END { print r }" /proc/mounts) tmp=$(echo w >/tmp/krun-e2e-w && cat /tmp/krun-e2e-w) uptime=$(cut -d" " -f1 /proc/uptime); exit 3'
	local common=(--rootfs "$base" --size 16M --env PATH=/bin:/usr/bin --cmd sh --cmd -c --cmd "$cmd"
		--kbs-ca "$conf/kbs/ca.pem" --bundle "$conf/bundle")
	"$krun_tee" mkimage "${common[@]}" -o "$e2e/images/conf-old.img" --workload-id conf-snp --tee emulated-snp \
		--kbs https://127.0.0.1:8443 >"$work/mkimage-old.log" 2>&1 ||
		{ conf_skip="mkimage of conf-old failed: $(tail -n 1 "$work/mkimage-old.log")"; return 1; }
	"$krun_tee" mkimage "${common[@]}" -o "$e2e/images/conf-snp.img" --workload-id conf-snp --tee emulated-snp \
		--kbs https://127.0.0.1:8443 --kbs-admin "https://$kbs_addr" --admin-key "$conf/kbs/admin.key" >"$work/mkimage-snp.log" 2>&1 ||
		{ conf_skip="mkimage/registration of conf-snp failed: $(tail -n 1 "$work/mkimage-snp.log")"; return 1; }
	"$krun_tee" mkimage "${common[@]}" -o "$e2e/images/conf-tdx.img" --workload-id conf-tdx --tee emulated-tdx \
		--kbs https://127.0.0.1:8443 >"$work/mkimage-tdx.log" 2>&1 &&
		"$krun_tee" kbs admin "${admin[@]}" register --image "$e2e/images/conf-tdx.img" \
			--passphrase-file "$e2e/images/conf-tdx.img.passphrase" --bundle "$conf/bundle" >>"$work/mkimage-tdx.log" 2>&1 ||
		{ conf_skip="mkimage/registration of conf-tdx failed: $(tail -n 1 "$work/mkimage-tdx.log")"; return 1; }
	"$krun_tee" mkimage "${common[@]}" -o "$e2e/images/conf-none.img" --workload-id conf-none --tee emulated-snp --integrity none \
		--kbs https://127.0.0.1:8443 --kbs-admin "https://$kbs_addr" --admin-key "$conf/kbs/admin.key" >"$work/mkimage-none.log" 2>&1 ||
		{ conf_skip="mkimage/registration of conf-none failed: $(tail -n 1 "$work/mkimage-none.log")"; return 1; }
	# Names another KBS address (where the foreign KBS will answer); same pin.
	"$krun_tee" mkimage "${common[@]}" -o "$e2e/images/conf-foreign.img" --workload-id conf-foreign --tee emulated-snp \
		--kbs https://127.0.0.1:8445 --kbs-admin "https://$kbs_addr" --admin-key "$conf/kbs/admin.key" >"$work/mkimage-foreign.log" 2>&1 ||
		{ conf_skip="mkimage of conf-foreign failed: $(tail -n 1 "$work/mkimage-foreign.log")"; return 1; }
	# From a container image: an OCI archive (the base tree plus a layer that
	# adds user app, its 0700 home, a setuid file and a whiteout of /data).
	local ocmd='echo krun-e2e-oci uid=$(id -u):$(id -g) cwd=$(pwd) home=$(stat -c %u:%g:%a /home/app) hello=$(cat /home/app/hello) data=$(test -e /data && echo present || echo gone) suid=$(stat -c %a /usr/bin/setuid-marker) root=$(awk "\$2 == \"/\" { r = \$1 } END { print r }" /proc/mounts); exit 3'
	"$work/bin/ociarchive" -rootfs "$base" -o "$work/oci-app.tar" -user app -workdir /home/app -env PATH=/bin:/usr/bin \
		-entrypoint sh -cmd -c -cmd "$ocmd" >/dev/null &&
		"$krun_tee" mkimage --from-oci "oci-archive:$work/oci-app.tar" -o "$e2e/images/conf-oci.img" --workload-id conf-oci \
			--tee emulated-snp --kbs https://127.0.0.1:8443 --kbs-ca "$conf/kbs/ca.pem" --bundle "$conf/bundle" \
			--kbs-admin "https://$kbs_addr" --admin-key "$conf/kbs/admin.key" >"$work/mkimage-oci.log" 2>&1 ||
		{ conf_skip="mkimage --from-oci of conf-oci failed: $(tail -n 1 "$work/mkimage-oci.log")"; return 1; }
}

# conf_tampered: the host-side attacks: a rewritten token, corrupted
# headers, a wrong passphrase; the passphrases leave the image directory.
conf_tampered() {
	# The host rewrites the workload id in the token: the launch then differs.
	cp "$e2e/images/conf-snp.img" "$e2e/images/conf-moved.img"
	"$work/bin/imgtool" set-launch -workload conf-moved "$e2e/images/conf-moved.img" || { conf_skip="cannot rewrite the token"; return 1; }
	cp "$e2e/images/conf-snp.img" "$e2e/images/conf-header.img"
	"$work/bin/imgtool" corrupt-headers "$e2e/images/conf-header.img" || { conf_skip="cannot corrupt the headers"; return 1; }
	od -An -N32 -tx1 /dev/urandom | tr -d ' \n' >"$conf/wrong.pass"
	cp "$e2e/images/conf-snp.img.passphrase" "$conf/conf-snp.pass"
	# One ciphertext byte flipped inside the ext4 superblock (data block 0
	# of the verity tree): the sector decrypts to other plaintext.
	cp "$e2e/images/conf-snp.img" "$e2e/images/conf-flip.img"
	"$work/bin/imgtool" flip-payload -at 1088 "$e2e/images/conf-flip.img" || { conf_skip="cannot flip a payload byte"; return 1; }
	# Data block 0 replaced by block 0 of the earlier build, encrypted under
	# conf-snp's own key (a host replaying old content the owner wrote with
	# the same key; imgtool transplant-block says why it must be re-encrypted).
	cp "$e2e/images/conf-snp.img" "$e2e/images/conf-rollback.img"
	"$work/bin/imgtool" transplant-block -block 0 -pass "$conf/conf-snp.pass" -from "$e2e/images/conf-old.img" \
		-from-pass "$e2e/images/conf-old.img.passphrase" "$e2e/images/conf-rollback.img" ||
		{ conf_skip="cannot transplant the old block"; return 1; }
	rm -f "$e2e/images/conf-old.img" "$e2e/images/"*.passphrase
}

# write_config: $e2e/config.sh, what scenarios.sh reads in L1 (or directly);
# @E2E_DIR@ is replaced once the run knows where $e2e ends up.
write_config() {
	{
		printf 'ONLY=%q\n' "$only"
		printf 'STEP_TIMEOUT=%q\n' "$step_timeout"
		if [ -n "$shell_cmd" ]; then echo "SHELL_CMD=@E2E_DIR@/shell-cmd"; else echo "SHELL_CMD="; fi
		printf 'CONF_SKIP=%q\n' "$conf_skip"
		# L1 has no RTC (rtc=off): it takes the wall clock from here, which the
		# guests' certificate checks and the KBS's token times need.
		printf 'E2E_NOW=%q\n' "$(date -u '+%Y-%m-%d %H:%M:%S')"
	} >"$e2e/config.sh"
	[ -z "$shell_cmd" ] || printf '%s\n' "$shell_cmd" >"$e2e/shell-cmd"
}
