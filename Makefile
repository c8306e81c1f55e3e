# Build, test, and regenerate the checked-in C code and LLVM IR in Generated/.

SWIFT ?= swift
MNC = .build/release/mnc
SPECS = $(wildcard Graphs/*.mnet)

.PHONY: build test generate

build:
	$(SWIFT) build -c release

test:
	$(SWIFT) test

# Generated/NAME/NAME.{h,c}: every spec at its default options and optimization, without
# weights (the code depends on shapes only). NAME.ll is the LLVM backend's optimized IR of
# the same network for generic x86-64, which writes the same NAME.h. A test fails when
# these files are stale.
generate: build
	@for spec in $(SPECS); do \
		name=$$(basename $$spec .mnet); \
		rm -rf Generated/$$name; \
		$(MNC) compile $$spec --emit c -o Generated/$$name > /dev/null || exit 1; \
		$(MNC) compile $$spec --backend llvm --emit llvm-ir --target x86_64-unknown-linux-gnu --cpu x86-64 \
			-o Generated/$$name > /dev/null || exit 1; \
		echo "Generated/$$name"; \
	done
