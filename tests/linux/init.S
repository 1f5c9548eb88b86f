/*
 * /sbin/init of the real-driver test's root file system.  System calls
 * from guest ring 3 do not work on the test hosts' KVM, so init makes
 * none: it only keeps the kernel up (answering pings) until the test
 * powers it off with SysRq.  Built with gcc -nostdlib -static.
 */
	.globl	_start
	.text
_start:
	pause
	jmp	_start
	.section .note.GNU-stack,"",@progbits
