/*
 * cpr-guest: a boot sector that keeps changing all of guest RAM
 *
 * Copyright (c) 2026 The qemu-cpr authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 *
 * Switches to long mode with identity-mapped 2 MiB pages for the first
 * 64 GiB, reads the RAM size from the RTC CMOS (as QEMU's PC machines
 * set it), then forever adds 1 to the first 64-bit word of every 4 KiB
 * page from 2 MiB to the end of RAM below 4 GiB and of all RAM above
 * 4 GiB.  After each pass it writes one character to COM1 ('a'..'z').
 * At any moment all counters differ by at most one.
 *
 * Build: as --64 -o g.o cpr-guest.S && ld -Ttext=0x7c00 --oformat=binary
 */

#define PML4        0x10000
#define PDPT        0x11000
#define PD          0x12000     /* 64 page directories follow */
#define NR_PD       64
#define START       0x200000
#define COM1        0x3f8

    .code16
    .globl _start
_start:
    cli
    xorw    %ax, %ax
    movw    %ax, %ds
    movw    %ax, %ss
    movw    $0x7c00, %sp
    inb     $0x92, %al          /* fast A20 */
    orb     $2, %al
    outb    %al, $0x92
    lgdt    gdt_desc
    movl    %cr0, %eax
    orl     $1, %eax
    movl    %eax, %cr0
    ljmpl   $0x08, $pm32

    .code32
pm32:
    movw    $0x10, %ax
    movw    %ax, %ds
    movw    %ax, %es
    movw    %ax, %ss
    /* clear the page tables */
    movl    $PML4, %edi
    movl    $(2 + NR_PD) * 1024, %ecx
    xorl    %eax, %eax
    rep stosl
    movl    $PDPT + 3, PML4
    /* PDPT[i] -> PD i */
    movl    $PDPT, %edi
    movl    $PD + 3, %eax
    movl    $NR_PD, %ecx
1:  movl    %eax, (%edi)
    addl    $8, %edi
    addl    $0x1000, %eax
    loop    1b
    /* PD entries: 2 MiB pages, entry n maps n * 2 MiB */
    movl    $PD, %edi
    xorl    %ebx, %ebx          /* n */
2:  movl    %ebx, %eax
    shll    $21, %eax
    orl     $0x83, %eax         /* present, writable, large */
    movl    %eax, (%edi)
    movl    %ebx, %eax
    shrl    $11, %eax
    movl    %eax, 4(%edi)
    addl    $8, %edi
    incl    %ebx
    cmpl    $NR_PD * 512, %ebx
    jb      2b
    /* long mode */
    movl    %cr4, %eax
    orl     $0x20, %eax         /* PAE */
    movl    %eax, %cr4
    movl    $PML4, %eax
    movl    %eax, %cr3
    movl    $0xc0000080, %ecx   /* EFER.LME */
    rdmsr
    orl     $0x100, %eax
    wrmsr
    movl    %cr0, %eax
    orl     $0x80000000, %eax
    movl    %eax, %cr0
    ljmpl   $0x18, $lm64

    .code64
cmos:                           /* %al: register -> %eax: value */
    outb    %al, $0x70
    xorl    %eax, %eax
    inb     $0x71, %al
    ret

lm64:
    /* r8 = end of RAM below 4 GiB */
    movb    $0x35, %al
    call    cmos
    movl    %eax, %ebx
    shll    $8, %ebx
    movb    $0x34, %al
    call    cmos
    orl     %eax, %ebx
    shlq    $16, %rbx
    leaq    0x1000000(%rbx), %r8
    testq   %rbx, %rbx
    jnz     3f
    movb    $0x31, %al          /* below 16 MiB: KiB above 1 MiB */
    call    cmos
    movl    %eax, %ebx
    shll    $8, %ebx
    movb    $0x30, %al
    call    cmos
    orl     %eax, %ebx
    shlq    $10, %rbx
    leaq    0x100000(%rbx), %r8
3:  /* r9 = end of RAM above 4 GiB */
    movb    $0x5d, %al
    call    cmos
    movl    %eax, %ebx
    shll    $8, %ebx
    movb    $0x5c, %al
    call    cmos
    orl     %eax, %ebx
    shll    $8, %ebx
    movb    $0x5b, %al
    call    cmos
    orl     %eax, %ebx
    shlq    $16, %rbx
    movq    $0x100000000, %r9
    addq    %rbx, %r9
    movl    $'a', %r10d
    movw    $COM1, %dx

pass:
    movq    $START, %rdi
4:  cmpq    %r8, %rdi
    jae     5f
    incq    (%rdi)
    addq    $0x1000, %rdi
    jmp     4b
5:  movq    $0x100000000, %rdi
6:  cmpq    %r9, %rdi
    jae     7f
    incq    (%rdi)
    addq    $0x1000, %rdi
    jmp     6b
7:  movl    %r10d, %eax
    outb    %al, %dx
    incl    %r10d
    cmpl    $'z', %r10d
    jbe     pass
    movl    $'a', %r10d
    jmp     pass

    .p2align 3
gdt:
    .quad   0
    .quad   0x00cf9a000000ffff  /* 0x08: 32-bit code */
    .quad   0x00cf92000000ffff  /* 0x10: data */
    .quad   0x00af9a000000ffff  /* 0x18: 64-bit code */
gdt_desc:
    .word   gdt_desc - gdt - 1
    .long   gdt

    .org    510
    .byte   0x55, 0xaa
