/*
 * Entry points of the Linux-entry test guest (boot.rst, "64-bit Boot
 * Protocol").  startup_32 sits at the load address and is not used by a
 * 64-bit loader; startup_64 is 0x200 further on.  Before anything else,
 * record what the loader left (RSI, RSP, selectors, GDTR), then take our
 * own stack, record RFLAGS and go to C.
 */
	.section .head.text, "ax"
	.code32
	.globl	startup_32
startup_32:
1:	cli
	hlt
	jmp	1b

	.org	0x200
	.code64
	.globl	startup_64
startup_64:
	movq	%rsi, linux_entry+0(%rip)
	movq	%rsp, linux_entry+8(%rip)
	movw	%cs, linux_entry+16(%rip)
	movw	%ds, linux_entry+18(%rip)
	movw	%es, linux_entry+20(%rip)
	movw	%ss, linux_entry+22(%rip)
	sgdt	linux_entry+24(%rip)
	leaq	stack_top(%rip), %rsp
	pushfq
	popq	linux_entry+40(%rip)
	call	lmain
1:	cli
	hlt
	jmp	1b

	.bss
	.balign	16
	.space	16384
stack_top:
