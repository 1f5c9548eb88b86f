/*
 * AP start-up (smp.c).  ap_tramp_start..ap_tramp_end is copied by the BSP
 * to TRAMP_PHYS (a page below 1 MiB) and entered by the SIPI with
 * CS:IP = (TRAMP_PHYS >> 4):0 in real mode.  It goes straight to long mode
 * on the page tables the BSP runs on (CR3 patched into ap_tramp_cr3; the
 * loader's 0x2000 maps the low GiB identically and at KERNBASE), far-jumps
 * to ap_long in the kernel image through the identity map, moves to the
 * KERNBASE addresses, takes an index and a stack, and calls ap_main(index).
 */
#define KERNBASE	0xffffffff80000000
#define TRAMP_PHYS	0x8000
#define AP_MAX		15
#define AP_STACK	2048
#define MSR_EFER	0xC0000080
#define EFER_LME	0x100
#define CR4_PAE		0x20
#define CR0_PG_ET_PE	0x80000011

	.section .rodata
	.balign	16
	.globl	ap_tramp_start, ap_tramp_end, ap_tramp_cr3
	.code16
ap_tramp_start:
	cli
	cld
	movw	%cs, %ax
	movw	%ax, %ds
	lgdtl	(tramp_gdtr - ap_tramp_start)
	movl	$CR4_PAE, %eax
	movl	%eax, %cr4
	movl	(ap_tramp_cr3 - ap_tramp_start), %eax
	movl	%eax, %cr3
	movl	$MSR_EFER, %ecx
	rdmsr
	orl	$EFER_LME, %eax
	wrmsr
	movl	$CR0_PG_ET_PE, %eax	/* protection and paging at once: long mode */
	movl	%eax, %cr0
	ljmpl	$0x08, $(ap_long - KERNBASE)

	.balign	8
tramp_gdt:
	.quad	0
	.quad	0x00209A0000000000	/* 0x08: 64-bit code */
	.quad	0x0000920000000000	/* 0x10: data */
tramp_gdtr:
	.word	23
	.long	TRAMP_PHYS + (tramp_gdt - ap_tramp_start)
	.balign	4
ap_tramp_cr3:
	.long	0
ap_tramp_end:

	.text
	.code64
ap_long:
	movl	$0x10, %eax
	movl	%eax, %ds
	movl	%eax, %es
	movl	%eax, %ss
	xorl	%eax, %eax
	movl	%eax, %fs
	movl	%eax, %gs
	movabsq	$ap_high, %rax
	jmp	*%rax
ap_high:
	movl	$1, %eax
	lock xaddl %eax, ap_next(%rip)
	cmpl	$AP_MAX, %eax
	jae	1f
	movl	%eax, %edi
	incl	%eax
	imull	$AP_STACK, %eax
	leaq	ap_stacks(%rip), %rsp
	addq	%rax, %rsp
	call	ap_main
1:	cli
	hlt
	jmp	1b

	.bss
	.balign	16
	.globl	ap_stacks
ap_stacks:
	.skip	AP_MAX * AP_STACK

	.section .note.GNU-stack, "", @progbits
