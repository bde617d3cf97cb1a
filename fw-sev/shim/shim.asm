# krun-tee boot shim (GNU as, Intel syntax). See README.md for the boot flow.
#
# Every mode (plain KVM, SEV-SNP, TDX) starts the boot vCPU here in 32-bit
# protected mode with flat 4 GiB segments and paging off, at the reset
# vector 0xfffffff0 (the last 16 bytes of this file once linked by shim.ld).
# The shim:
#   1. loads its own GDT and a 32-bit IDT (#GP for the SEV_STATUS probe,
#      #VC for CPUID under SEV-ES/SNP, everything else is fatal);
#   2. detects the TEE: TDX by CPUID leaf 0x21 "IntelTDX    ", SEV-SNP by
#      CPUID 0x8000001F EAX bit 1 and then SEV_STATUS (MSR 0xC0010131) bit 2;
#      the C-bit position is CPUID 0x8000001F EBX[5:0];
#   3. builds an identity map of the first 4 GiB with 2 MiB pages at
#      PT_BASE (the C-bit set in every entry under SNP) and enters long mode;
#   4. checks the parameter block the VMM wrote at PARAMS (measured);
#   5. under SNP PVALIDATEs, under TDX accepts (TDG.MEM.PAGE.ACCEPT) every
#      4 KiB page of the RAM ranges listed there;
#   6. jumps to the kernel's 64-bit entry with RSI = zero page, CS 0x10,
#      DS/ES/SS 0x18, interrupts off (Linux 64-bit boot protocol).
# On failure it reports EXIT_* below: on port 0xf4 (plain KVM: the VMM's
# exit port), as a GHCB MSR-protocol termination request (SNP: reason set 3,
# reason code EXIT_*), or a TDG.VP.VMCALL port write (TDX, 64-bit part only),
# then halts for ever.
#
# Constants marked [go] must match vmm/boot/firmware.go; the fw-sev/shim Go
# tests assemble this file and check them through the header and behaviour.

	.intel_syntax noprefix

# ---- layout [go] ----------------------------------------------------------
	.set SHIM_SIZE,       0x1000          # shim.ld SHIM_SIZE
	.set SHIM_VERSION,    1               # ShimVersion
	.set HEADER_SIZE,     0x20            # shimHeaderSize
	.set PARAMS,          0x4000          # ShimParamsAddr
	.set SCRATCH,         0x8000          # ShimScratchAddr (launch-zeroed)
	.set STACK_TOP,       0x8ff0          # ShimStackTop
	.set PT_BASE,         0x9000          # ShimPageTablesAddr: PML4, PDPT, 4 PDs
	.set MAX_RANGES,      128             # ParamMaxRanges

# scratch page: two IDTs and three variables (the stack grows down from
# STACK_TOP, far above them)
	.set IDT32,           SCRATCH         # 32 gates x 8 bytes
	.set IDT64,           SCRATCH + 0x100 # 32 gates x 16 bytes
	.set VAR_TEE,         SCRATCH + 0x300 # detected TEE (TEE_*)
	.set VAR_CBIT_HI,     SCRATCH + 0x304 # C-bit mask for the PTEs' high dword
	.set VAR_NX,          SCRATCH + 0x308 # 1 if EFER.NXE is supported

# ---- parameter block offsets [go] -----------------------------------------
	.set P_MAGIC_LO,      0x4e55524b      # "KRUN" (ParamMagic "KRUNPARM")
	.set P_MAGIC_HI,      0x4d524150      # "PARM"
	.set P_VERSION_VAL,   1               # ParamVersion
	.set P_MAGIC,         0x00
	.set P_VERSION,       0x08
	.set P_TEE,           0x0c
	.set P_FLAGS,         0x10
	.set P_COUNT,         0x14
	.set P_ENTRY,         0x18
	.set P_ZEROPAGE,      0x20
	.set P_PAGETABLES,    0x28
	.set P_RANGES,        0x40            # {u64 gpa, u64 size} each
	.set P_RANGE_SIZE,    16
	.set ZP_CC_BLOB,      0x13c           # boot_params.cc_blob_address (zpCCBlobAddress)

# ---- TEE codes [go: boot.ParamTEE*] ---------------------------------------
	.set TEE_NONE,        0
	.set TEE_SNP,         1
	.set TEE_TDX,         2

# ---- exit codes (README.md) -----------------------------------------------
	.set EXIT_PARAM_MAGIC,   0xe0  # no parameter block (bad magic)
	.set EXIT_PARAM_VERSION, 0xe1  # parameter block version unsupported
	.set EXIT_PARAM_INVALID, 0xe2  # bad range count/alignment, page tables, entry or zero page
	.set EXIT_TEE_MISMATCH,  0xe3  # running in SNP/TDX, layout built for another TEE
	.set EXIT_CBIT,          0xe4  # SNP C-bit position outside 32..51
	.set EXIT_PVALIDATE,     0xe5  # PVALIDATE failed
	.set EXIT_ACCEPT,        0xe6  # TDG.MEM.PAGE.ACCEPT failed
	.set EXIT_UNMAPPED,      0xe7  # SNP range above the 4 GiB identity map
	.set EXIT_NO_LONG_MODE,  0xe8  # CPU without long mode
	.set EXIT_EXCEPTION,     0xe9  # unexpected exception or #VC

# ---- architectural constants ----------------------------------------------
	.set EXIT_PORT,       0xf4
	.set MSR_EFER,        0xc0000080
	.set MSR_SEV_STATUS,  0xc0010131
	.set MSR_GHCB,        0xc0010130
	.set EFER_LME,        1 << 8
	.set EFER_NXE,        1 << 11
	.set CR0_PE,          1 << 0
	.set CR0_PG,          1 << 31
	.set CR4_PAE,         1 << 5
	.set SEL_CODE32,      0x08
	.set SEL_CODE64,      0x10            # __BOOT_CS
	.set SEL_DATA,        0x18            # __BOOT_DS
	.set SVM_EXIT_CPUID,  0x72            # #VC error code for CPUID
	.set GHCB_CPUID_REQ,  0x004           # GHCB MSR protocol: CPUID request
	.set GHCB_CPUID_RESP, 0x005
	.set GHCB_TERM_REQ,   0x100 | (3 << 12) # termination, reason set 3 (krun-tee shim)
	.set TDX_ALREADY_ACCEPTED, 0x00000b0a # TDX_PAGE_ALREADY_ACCEPTED >> 32
	.set TDVMCALL_IO,     30              # Instruction.IO

	.section .note.GNU-stack, "", @progbits
	.text

# ---- header at offset 0 [go: shimHdr*] ------------------------------------
shim_start:
	.ascii "KRUNSHIM"
	.long SHIM_VERSION
	.long HEADER_SIZE
	.long PARAMS
	.long PT_BASE
	.long SCRATCH
	.long MAX_RANGES

# ---- GDT: 0x08 32-bit code, 0x10 64-bit code, 0x18 data (all flat) -------
	.balign 8
gdt:
	.quad 0
	.quad 0x00cf9b000000ffff
	.quad 0x00af9b000000ffff
	.quad 0x00cf93000000ffff
gdt_end:
gdt_desc:
	.word gdt_end - gdt - 1
	.long gdt
idt32_desc:
	.word 32 * 8 - 1
	.long IDT32
idt64_desc:
	.word 32 * 16 - 1
	.quad IDT64

# ===========================================================================
	.code32
entry32:
	cli
	cld
	# TDX starts every vCPU here with ESI = vCPU index; plain KVM and the
	# SNP VMSA start only vCPU 0 here, with ESI = 0. APs spin before they
	# touch the shared stack or scratch page, and without HLT (a #VE with
	# no IDT yet would kill the TD).
	test esi, esi
	jnz ap_spin
	lgdt [gdt_desc]
	.byte 0xea                      # ljmp SEL_CODE32:reload32
	.long reload32
	.word SEL_CODE32
reload32:
	mov eax, SEL_DATA
	mov ds, eax
	mov es, eax
	mov ss, eax
	mov fs, eax
	mov gs, eax
	mov esp, STACK_TOP
	mov dword ptr [VAR_TEE], TEE_NONE
	mov dword ptr [VAR_CBIT_HI], 0
	mov dword ptr [VAR_NX], 0
	call build_idts
	lidt [idt32_desc]

	# -- TDX: CPUID leaf 0x21 subleaf 0 = "IntelTDX    " --
	xor eax, eax
	cpuid
	cmp eax, 0x21
	jb not_tdx
	mov eax, 0x21
	xor ecx, ecx
	cpuid
	cmp ebx, 0x65746e49             # "Inte"
	jne not_tdx
	cmp edx, 0x5844546c             # "lTDX"
	jne not_tdx
	cmp ecx, 0x20202020             # "    "
	jne not_tdx
	mov dword ptr [VAR_TEE], TEE_TDX
	jmp detected
not_tdx:
	# -- SEV-SNP: 0x8000001F EAX bit 1 (SEV), then SEV_STATUS bit 2 --
	mov eax, 0x80000000
	cpuid
	cmp eax, 0x8000001f
	jb detected
	mov eax, 0x8000001f
	cpuid
	test eax, 1 << 1
	jz detected
	mov esi, ebx                    # EBX[5:0] = C-bit position
	mov ecx, MSR_SEV_STATUS
probe_rdmsr:                            # a #GP here reads as 0 (gp32)
	rdmsr
	test eax, 1 << 2
	jz detected
	mov dword ptr [VAR_TEE], TEE_SNP
	and esi, 0x3f
	cmp esi, 32
	jb bad_cbit
	cmp esi, 51
	ja bad_cbit
	sub esi, 32
	xor eax, eax
	bts eax, esi
	mov [VAR_CBIT_HI], eax
detected:
	# -- long mode and NX --
	mov eax, 0x80000000
	cpuid
	cmp eax, 0x80000001
	jb no_long_mode
	mov eax, 0x80000001
	cpuid
	bt edx, 29
	jnc no_long_mode
	bt edx, 20
	jnc 1f
	mov dword ptr [VAR_NX], 1
1:
	# -- identity map of 4 GiB: PML4 -> PDPT -> 4 PDs of 2 MiB pages --
	mov edi, PT_BASE
	mov ecx, 6 * 1024
	xor eax, eax
	rep stosd
	mov edx, [VAR_CBIT_HI]
	mov dword ptr [PT_BASE], PT_BASE + 0x1000 + 3   # present, writable
	mov [PT_BASE + 4], edx
	mov edi, PT_BASE + 0x1000
	mov eax, PT_BASE + 0x2000 + 3
	mov ecx, 4
2:	mov [edi], eax
	mov [edi + 4], edx
	add edi, 8
	add eax, 0x1000
	loop 2b
	mov edi, PT_BASE + 0x2000
	mov eax, 0x83                   # present, writable, 2 MiB page
	mov ecx, 2048
3:	mov [edi], eax
	mov [edi + 4], edx
	add edi, 8
	add eax, 0x200000
	loop 3b

	# -- long mode: PAE, CR3, EFER.LME (+NXE), paging --
	mov eax, cr4
	or eax, CR4_PAE
	mov cr4, eax
	mov eax, PT_BASE
	mov cr3, eax
	mov ecx, MSR_EFER
	rdmsr
	mov ebx, eax
	or eax, EFER_LME
	cmp dword ptr [VAR_NX], 0
	je 4f
	or eax, EFER_NXE
4:	cmp eax, ebx                    # TDX: already set, and the write is not ours to make
	je 5f
	wrmsr
5:	mov eax, cr0
	or eax, CR0_PG | CR0_PE
	mov cr0, eax
	.byte 0xea                      # ljmp SEL_CODE64:long64
	.long long64
	.word SEL_CODE64

bad_cbit:
	mov al, EXIT_CBIT
	jmp fail32
no_long_mode:
	mov al, EXIT_NO_LONG_MODE
	jmp fail32

# build_idts fills IDT32 (vector 13 -> gp32, 29 -> vc32, others -> exc32)
# and IDT64 (all -> exc64). Clobbers eax, ebx, ecx, edx, edi.
build_idts:
	mov edi, IDT32
	mov ebx, IDT64
	xor ecx, ecx
1:	mov eax, offset exc32
	cmp ecx, 13
	jne 2f
	mov eax, offset gp32
2:	cmp ecx, 29
	jne 3f
	mov eax, offset vc32
3:	mov edx, eax
	and eax, 0xffff
	or eax, SEL_CODE32 << 16
	mov [edi], eax
	and edx, 0xffff0000
	or edx, 0x8e00                  # present, 32-bit interrupt gate
	mov [edi + 4], edx
	mov eax, offset exc64
	mov edx, eax
	and eax, 0xffff
	or eax, SEL_CODE64 << 16
	mov [ebx], eax
	and edx, 0xffff0000
	or edx, 0x8e00                  # present, 64-bit interrupt gate
	mov [ebx + 4], edx
	mov dword ptr [ebx + 8], 0
	mov dword ptr [ebx + 12], 0
	add edi, 8
	add ebx, 16
	inc ecx
	cmp ecx, 32
	jb 1b
	ret

# #GP: only the SEV_STATUS probe may fault (a CPU that reports SEV in CPUID
# without the MSR); it reads as zero.
gp32:
	cmp dword ptr [esp + 4], offset probe_rdmsr
	jne exc32
	add esp, 4                      # error code
	add dword ptr [esp], 2          # skip rdmsr
	xor eax, eax
	xor edx, edx
	iretd

# #VC (SEV-ES/SNP): CPUID through the GHCB MSR protocol, one register per
# request; any other cause is fatal.
.macro GHCB_CPUID reg
	mov eax, GHCB_CPUID_REQ | (\reg << 30)
	mov edx, esi                    # function
	mov ecx, MSR_GHCB
	wrmsr
	.byte 0xf3, 0x0f, 0x01, 0xd9    # vmgexit
	mov ecx, MSR_GHCB
	rdmsr
	and eax, 0xfff
	cmp eax, GHCB_CPUID_RESP
	jne vc_fatal
	push edx
.endm
vc32:
	cmp dword ptr [esp], SVM_EXIT_CPUID
	jne vc_fatal
	push esi
	mov esi, eax
	GHCB_CPUID 0
	GHCB_CPUID 1
	GHCB_CPUID 2
	GHCB_CPUID 3
	pop edx
	pop ecx
	pop ebx
	pop eax
	pop esi
	add esp, 4                      # error code
	add dword ptr [esp], 2          # skip cpuid
	iretd
vc_fatal:
	mov dword ptr [VAR_TEE], TEE_SNP # only SEV-ES/SNP raise #VC
exc32:
	mov al, EXIT_EXCEPTION

# fail32: report AL and halt.
fail32:
	movzx ebx, al
	cmp dword ptr [VAR_TEE], TEE_SNP
	je 1f
	cmp dword ptr [VAR_TEE], TEE_TDX
	je park32                       # no port I/O without a #VE handler
	mov eax, ebx
	out EXIT_PORT, al
	jmp park32
1:	mov eax, ebx
	shl eax, 16
	or eax, GHCB_TERM_REQ
	xor edx, edx
	mov ecx, MSR_GHCB
	wrmsr
	.byte 0xf3, 0x0f, 0x01, 0xd9    # vmgexit
park32:
	cli
	cmp dword ptr [VAR_TEE], TEE_TDX
	je ap_spin                      # HLT in a TD is a #VE: spin instead
	hlt
	jmp park32
ap_spin:
	pause
	jmp ap_spin

# ===========================================================================
	.code64
long64:
	mov eax, SEL_DATA
	mov ds, eax
	mov es, eax
	mov ss, eax
	mov fs, eax
	mov gs, eax
	mov esp, STACK_TOP
	lidt [rip + idt64_desc]

	# -- the parameter block --
	mov esi, PARAMS
	cmp dword ptr [rsi + P_MAGIC], P_MAGIC_LO
	jne bad_magic
	cmp dword ptr [rsi + P_MAGIC + 4], P_MAGIC_HI
	jne bad_magic
	cmp dword ptr [rsi + P_VERSION], P_VERSION_VAL
	jne bad_version
	mov ebx, [VAR_TEE]
	mov eax, [rsi + P_TEE]
	cmp eax, TEE_TDX
	ja tee_mismatch
	test ebx, ebx                   # plain hardware runs any layout (emulated TEEs)
	jz 1f
	cmp eax, ebx
	jne tee_mismatch
1:	cmp qword ptr [rsi + P_PAGETABLES], PT_BASE
	jne bad_params
	mov r12d, [rsi + P_COUNT]
	cmp r12d, MAX_RANGES
	ja bad_params
	mov eax, 0xffff0000             # entry and zero page: mapped, below the shim
	mov rdx, [rsi + P_ENTRY]
	test rdx, rdx
	jz bad_params
	cmp rdx, rax
	jae bad_params
	mov rdx, [rsi + P_ZEROPAGE]
	test rdx, rdx
	jz bad_params
	cmp rdx, rax
	jae bad_params

	# -- validate (SNP) or accept (TDX) the RAM the launch did not add --
	test ebx, ebx
	jz jump_kernel
	lea r13, [rsi + P_RANGES]
next_range:
	test r12d, r12d
	jz jump_kernel
	mov r14, [r13]                  # gpa
	mov r15, [r13 + 8]              # size
	mov rax, r14
	or rax, r15
	test eax, 0xfff
	jnz bad_params
	add r15, r14                    # end
	jc bad_params
	cmp ebx, TEE_TDX
	je tdx_page
	mov rax, 0x100000000
	cmp r15, rax
	ja unmapped
snp_page:
	cmp r14, r15
	jae range_done
	mov rax, r14                    # identity map: VA = GPA
	xor ecx, ecx                    # 4 KiB
	mov edx, 1                      # validate
	.byte 0xf2, 0x0f, 0x01, 0xff    # pvalidate
	jc 2f                           # FAIL_NOUPDATE: already validated, fine
	test eax, eax
	jnz pvalidate_failed
2:	add r14, 0x1000
	jmp snp_page
tdx_page:
	cmp r14, r15
	jae range_done
	mov eax, 6                      # TDG.MEM.PAGE.ACCEPT
	mov rcx, r14                    # GPA | level 0 (4 KiB)
	.byte 0x66, 0x0f, 0x01, 0xcc    # tdcall
	test rax, rax
	jz 3f
	shr rax, 32
	cmp eax, TDX_ALREADY_ACCEPTED
	jne accept_failed
3:	add r14, 0x1000
	jmp tdx_page
range_done:
	add r13, P_RANGE_SIZE
	dec r12d
	jmp next_range

jump_kernel:
	mov rax, [rsi + P_ENTRY]
	mov rsi, [rsi + P_ZEROPAGE]
	# An SNP layout on hardware without SNP (the emulated TEE): the kernel
	# would find the CC blob, see SNP off and terminate. Only active SNP
	# makes the blob meaningful, so hide it otherwise.
	mov ebx, [VAR_TEE]
	cmp ebx, TEE_SNP
	je 4f
	mov dword ptr [rsi + ZP_CC_BLOB], 0
4:
	xor ebx, ebx
	xor ecx, ecx
	xor edx, edx
	xor edi, edi
	xor ebp, ebp
	xor r12d, r12d
	xor r13d, r13d
	xor r14d, r14d
	xor r15d, r15d
	cli
	jmp rax

bad_magic:
	mov al, EXIT_PARAM_MAGIC
	jmp fail64
bad_version:
	mov al, EXIT_PARAM_VERSION
	jmp fail64
tee_mismatch:
	mov al, EXIT_TEE_MISMATCH
	jmp fail64
bad_params:
	mov al, EXIT_PARAM_INVALID
	jmp fail64
unmapped:
	mov al, EXIT_UNMAPPED
	jmp fail64
pvalidate_failed:
	mov al, EXIT_PVALIDATE
	jmp fail64
accept_failed:
	mov al, EXIT_ACCEPT
	jmp fail64
exc64:
	mov al, EXIT_EXCEPTION

# fail64: report AL and halt.
fail64:
	movzx ebx, al
	mov eax, [VAR_TEE]
	cmp eax, TEE_SNP
	je 1f
	cmp eax, TEE_TDX
	je 2f
	mov eax, ebx
	out EXIT_PORT, al
	jmp park64
1:	mov eax, ebx
	shl eax, 16
	or eax, GHCB_TERM_REQ
	xor edx, edx
	mov ecx, MSR_GHCB
	wrmsr
	.byte 0xf3, 0x0f, 0x01, 0xd9    # vmgexit
	jmp park64
2:	xor eax, eax                    # TDG.VP.VMCALL
	mov ecx, 0xfc00                 # pass R10-R15
	xor r10d, r10d                  # standard TDVMCALL
	mov r11d, TDVMCALL_IO
	mov r12d, 1                     # size
	mov r13d, 1                     # write
	mov r14d, EXIT_PORT
	mov r15d, ebx
	.byte 0x66, 0x0f, 0x01, 0xcc    # tdcall
park64:
	cli
	cmp dword ptr [VAR_TEE], TEE_TDX
	je 3f
	hlt
	jmp park64
3:	pause
	jmp 3b

# ---- reset vector: the last 16 bytes, at 0xfffffff0 ------------------------
	.code32
	.org SHIM_SIZE - 16, 0xcc
	.globl reset_vector
reset_vector:
	.byte 0xe9                      # jmp entry32 (rel32)
	.long entry32 - (reset_vector + 5)
	.fill 11, 1, 0xf4
