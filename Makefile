# qemu-cpr: live update for QEMU (cprsave/cprload) as a patch set on
# Debian bookworm's QEMU 7.2.  See README.md.

GUEST_IMG := build/guest/cpr-guest.img
FUZZ_GUEST := build/guest/fuzz-guest.elf
SYZ_GUEST := build/guest/syz-guest.elf
SYZ_HOST := build/syz-host
L2_CFLAGS := -m32 -ffreestanding -fno-pic -fno-stack-protector -nostdlib \
             -O2 -Wall -Werror
QEMU      := build/qemu-system-x86_64

LINUX_GUEST := build/guest/linux/stamp

.PHONY: all deps build build-b build-san guest linux-guest vfio-l1 demo check bench deb \
        clean

all: build

deps:
	bash scripts/deps.sh

build: deps
	bash scripts/build.sh

build-b: build
	bash scripts/build.sh b

# clang with ASan, UBSan and libFuzzer: the fuzz targets and the
# sanitizer suite of make check (build/obj-san)
build-san: build-b
	bash scripts/build.sh san

guest: deps $(GUEST_IMG) $(FUZZ_GUEST) $(SYZ_GUEST) $(SYZ_HOST)

linux-guest: deps
	bash scripts/linux-guest.sh

vfio-l1: build guest
	bash scripts/vfio-l1.sh

$(GUEST_IMG): tests/guest/cpr-guest.S | deps
	@mkdir -p $(@D)
	$(CC) -c -o $(@D)/cpr-guest.o $<
	ld -Ttext=0x7c00 --oformat=binary -o $@.tmp $(@D)/cpr-guest.o
	test "$$(stat -c %s $@.tmp)" = 512
	truncate -s 1M $@.tmp
	mv $@.tmp $@

# The fuzzing harness guest (multiboot, shares tests/guest/l2.c)
$(FUZZ_GUEST): tests/guest/fuzz-guest.c tests/guest/l2.c tests/guest/l2.h \
               tests/guest/l2.ld | deps
	@mkdir -p $(@D)
	$(CC) $(L2_CFLAGS) -c -o $(@D)/l2.o tests/guest/l2.c
	$(CC) $(L2_CFLAGS) -c -o $(@D)/fuzz-guest.o tests/guest/fuzz-guest.c
	ld -m elf_i386 --no-warn-rwx-segments -T tests/guest/l2.ld -o $@ \
	    $(@D)/l2.o $(@D)/fuzz-guest.o

# syzkaller's snapshot mode: the guest executor and the host side
$(SYZ_GUEST): tests/guest/syz-guest.c tests/guest/syz-abi.h tests/guest/l2.c \
              tests/guest/l2.h tests/guest/l2.ld | deps
	@mkdir -p $(@D)
	$(CC) $(L2_CFLAGS) -c -o $(@D)/syz-l2.o tests/guest/l2.c
	$(CC) $(L2_CFLAGS) -c -o $(@D)/syz-guest.o tests/guest/syz-guest.c
	ld -m elf_i386 --no-warn-rwx-segments -T tests/guest/l2.ld -o $@ \
	    $(@D)/syz-l2.o $(@D)/syz-guest.o

$(SYZ_HOST): tests/e2e/syz-host.c tests/guest/syz-abi.h | deps
	@mkdir -p $(@D)
	$(CC) -O2 -Wall -Werror -pthread -Itests/guest -o $@ tests/e2e/syz-host.c

# The Debian package of build/obj's QEMU, in build/ (scripts/deb.sh)
deb: build
	bash scripts/deb.sh

demo: build guest
	bash scripts/demo.sh

check: build build-b build-san guest linux-guest vfio-l1
	bash scripts/check.sh

bench: build guest linux-guest
	bash bench/blackout.sh

clean:
	rm -rf build/obj build/obj-b build/src build/guest
