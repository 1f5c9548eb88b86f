/*
 * Entry points of the test guest.
 *
 * btext: the FreeBSD/amd64 entry (§2.4, §2.5).  The loader left us in long
 * mode on its page tables (CR3 0x2000), IF=0, RSP = 0x1000 pointing at
 * u32 {0, modulep, kernend}.  Like locore.S we read the two words at
 * RSP+4/RSP+8; before that we record what the loader left (RFLAGS, RSP,
 * IDTR) for the checks, then move to our own stack.
 *
 * mb_entry: multiboot v1 (a.out kludge) 32-bit entry so that
 * `qemu-system-x86_64 -kernel` can start the same file.  It builds the same
 * page tables as userboot (§2.1) and joins the common code with
 * no_loader = 1; checks that need the loader report SKIP.
 */
#define KERNBASE	0xffffffff80000000
#define MB_MAGIC	0x1BADB002
#define MB_FLAGS	0x00010000	/* address fields valid (a.out kludge) */
#define MSR_EFER	0xC0000080
#define EFER_LME	0x100
#define CR0_PG_NE_PE	0x80000021
#define CR4_PAE		0x20
#define PSL_KERNEL	0x2

	.section .text.boot, "ax"

	/* Multiboot header: must be in the first 8 KiB of the file. */
	.balign 4
mb_header:
	.long	MB_MAGIC
	.long	MB_FLAGS
	.long	-(MB_MAGIC + MB_FLAGS)
	.long	mb_header - KERNBASE	/* header_addr */
	.long	kernel_phys_start	/* load_addr */
	.long	edata_phys		/* load_end_addr */
	.long	end_phys		/* bss_end_addr */
	.long	mb_entry - KERNBASE	/* entry_addr */

	.code64
	.globl	btext
	.type	btext, @function
btext:
	/* Record the loader's state before touching anything.  pushfq uses
	 * the loader's stack (0xff8, page 0), exactly like locore.S does. */
	pushfq
	popq	entry_state+0(%rip)
	movq	%rsp, entry_state+8(%rip)
	movl	0(%rsp), %eax
	movq	%rax, entry_state+16(%rip)
	movl	4(%rsp), %eax		/* modulep */
	movq	%rax, entry_state+24(%rip)
	movl	8(%rsp), %eax		/* kernend */
	movq	%rax, entry_state+32(%rip)
	sidt	entry_state+40(%rip)
	leaq	bootstack_top(%rip), %rsp
	pushq	$PSL_KERNEL
	popfq
	xorl	%edi, %edi		/* no_loader = 0 */
	xorl	%esi, %esi
	xorl	%edx, %edx
	call	kmain
1:	cli
	hlt
	jmp	1b
	.size	btext, . - btext

	.code32
	.type	mb_entry, @function
mb_entry:
	cli
	cld
	movl	%eax, %ebp		/* multiboot magic */
	movl	%ebx, %esi		/* multiboot info, kept */
	/* QEMU zeroes the BSS too, but do not rely on it */
	movl	$(__bss_start - KERNBASE), %edi
	movl	$end_phys, %ecx
	subl	%edi, %ecx
	xorl	%eax, %eax
	rep stosb
	/* PML4 @0x2000, PDPT @0x3000, PD @0x4000 exactly like userboot */
	xorl	%ecx, %ecx
1:	movl	$0x3003, 0x2000(,%ecx,8)
	movl	$0, 0x2004(,%ecx,8)
	movl	$0x4003, 0x3000(,%ecx,8)
	movl	$0, 0x3004(,%ecx,8)
	movl	%ecx, %eax
	shll	$21, %eax
	orl	$0x83, %eax
	movl	%eax, 0x4000(,%ecx,8)
	movl	$0, 0x4004(,%ecx,8)
	incl	%ecx
	cmpl	$512, %ecx
	jb	1b
	lgdt	(boot_gdtr - KERNBASE)
	movl	$CR4_PAE, %eax
	movl	%eax, %cr4
	movl	$0x2000, %eax
	movl	%eax, %cr3
	movl	$MSR_EFER, %ecx
	rdmsr
	orl	$EFER_LME, %eax
	wrmsr
	movl	$CR0_PG_NE_PE, %eax
	movl	%eax, %cr0
	ljmp	$0x08, $(mb_long - KERNBASE)

	.code64
mb_long:
	movl	$0x10, %eax
	movl	%eax, %ds
	movl	%eax, %es
	movl	%eax, %ss
	movl	%eax, %fs
	movl	%eax, %gs
	movabsq	$mb_high, %rax
	jmp	*%rax
mb_high:
	movabsq	$bootstack_top, %rsp
	pushq	$PSL_KERNEL
	popfq
	movl	%esi, %edx		/* multiboot info (phys) */
	movl	%ebp, %esi		/* multiboot magic */
	movl	$1, %edi		/* no_loader = 1 */
	call	kmain
1:	cli
	hlt
	jmp	1b
	.size	mb_entry, . - mb_entry

	/* Same shape as the loader's GDT (§2.3), but with a writable data
	 * segment because this path really loads SS/DS. */
	.balign	8
boot_gdt:
	.quad	0
	.quad	0x00209A0000000000	/* 0x08: 64-bit code */
	.quad	0x0000920000000000	/* 0x10: data */
boot_gdtr:
	.word	23
	.long	boot_gdt - KERNBASE

/*
 * Exception stubs (vectors 0-31): push a dummy error code where the CPU
 * pushes none, then the vector, and report from C.  Nothing returns: a
 * fault fails the current check and ends the run, instead of the triple
 * fault a missing IDT would cause.
 */
	.text
	.macro	TRAPSTUB n
	.balign	16
trap_stub_\n:
	.if	(\n == 8) || (\n == 10) || (\n == 11) || (\n == 12) || (\n == 13) || (\n == 14) || (\n == 17) || (\n == 21) || (\n == 29) || (\n == 30)
	.else
	pushq	$0
	.endif
	pushq	$\n
	jmp	trap_common
	.endm

	.irp	n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
	TRAPSTUB \n
	.endr

trap_common:
	movq	%rsp, %rdi		/* {vector, error, rip, cs, rflags, rsp, ss} */
	andq	$-16, %rsp
	call	trap_handler
1:	cli
	hlt
	jmp	1b

	.section .rodata
	.balign	8
	.globl	trap_stubs
trap_stubs:
	.irp	n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
	.quad	trap_stub_\n
	.endr

	.section .bss.stack, "aw", @nobits
	.balign	16
bootstack:
	.skip	16384
bootstack_top:

	.section .note.GNU-stack, "", @progbits
