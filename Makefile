# qemu-cpr: live update for QEMU (cprsave/cprload) as a patch set on
# Debian bookworm's QEMU 7.2.  See README.md.

GUEST_IMG := build/guest/cpr-guest.img
QEMU      := build/qemu-system-x86_64

LINUX_GUEST := build/guest/linux/stamp

.PHONY: all deps build build-b guest linux-guest vfio-l1 demo check bench clean

all: build

deps:
	bash scripts/deps.sh

build: deps
	bash scripts/build.sh

build-b: build
	bash scripts/build.sh b

guest: deps $(GUEST_IMG)

linux-guest: deps
	bash scripts/linux-guest.sh

vfio-l1: build
	bash scripts/vfio-l1.sh

$(GUEST_IMG): tests/guest/cpr-guest.S | deps
	@mkdir -p $(@D)
	$(CC) -c -o $(@D)/cpr-guest.o $<
	ld -Ttext=0x7c00 --oformat=binary -o $@.tmp $(@D)/cpr-guest.o
	test "$$(stat -c %s $@.tmp)" = 512
	truncate -s 1M $@.tmp
	mv $@.tmp $@

demo: build guest
	bash scripts/demo.sh

check: build build-b guest linux-guest vfio-l1
	bash scripts/check.sh

bench: build guest linux-guest
	bash bench/blackout.sh

clean:
	rm -rf build/obj build/obj-b build/src build/guest
