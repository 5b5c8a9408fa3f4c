# qemu-cpr: live update for QEMU (cprsave/cprload) as a patch set on
# Debian bookworm's QEMU 7.2.  See README.md.

GUEST_IMG := build/guest/cpr-guest.img
QEMU      := build/qemu-system-x86_64

.PHONY: all deps build guest demo check bench clean

all: build

deps:
	bash scripts/deps.sh

build: deps
	bash scripts/build.sh

guest: deps $(GUEST_IMG)

$(GUEST_IMG): tests/guest/cpr-guest.S | deps
	@mkdir -p $(@D)
	$(CC) -c -o $(@D)/cpr-guest.o $<
	ld -Ttext=0x7c00 --oformat=binary -o $@.tmp $(@D)/cpr-guest.o
	test "$$(stat -c %s $@.tmp)" = 512
	truncate -s 1M $@.tmp
	mv $@.tmp $@

demo: build guest
	bash scripts/demo.sh

check: build guest
	bash scripts/check.sh

bench: build guest
	bash bench/blackout.sh

clean:
	rm -rf build/obj build/src build/guest
