# Build, test, the quick-start demo, and the checked-in code in Generated/.
#
#   make          build mnc (release)
#   make demo     install the Debian packages mnc needs, build it, compile MobileNetV2 to a
#                 library and a classifier executable, and classify a photograph
#   make test     install the packages, then run the test suite (release build)
#   make generate rewrite Generated/ (C and LLVM IR) for every spec in Graphs/
#   make bench    time the compiled MobileNets against ONNX Runtime and OpenVINO (installed
#                 into build/bench-venv from PyPI) and write BENCHMARKS.md

SWIFT ?= swift
MNC = .build/release/mnc
SPECS = $(wildcard Graphs/*.mnet)
SHARED = ../shared/data
DEMO = build/demo

.PHONY: build deps test demo generate bench clean

build:
	$(SWIFT) build -c release

deps:
	@bash Scripts/install-deps.sh

# Release mode keeps the reference interpreter fast enough for the full-size parity tests;
# -enable-testing lets the tests reach internal declarations. All tests are XCTest, so the
# Swift Testing runner, which would close the output with "0 tests", is turned off.
test: deps
	$(SWIFT) test -c release -Xswiftc -enable-testing --disable-swift-testing

# With ../shared/data: TFLite MobileNetV2 trained on ImageNet, and a real photograph.
# Without it: random weights and a generated test image, and the demo says so.
demo: deps build
	@rm -rf $(DEMO) && mkdir -p $(DEMO)
	@if [ -f $(SHARED)/models/mobilenet_v2_1.0_224_quant.tflite ]; then \
		echo "== compiling MobileNetV2 with ImageNet weights ($(SHARED)/models/mobilenet_v2_1.0_224_quant.tflite)"; \
		$(MNC) compile Graphs/tf_mobilenet_v2.mnet --weights $(SHARED)/models/mobilenet_v2_1.0_224_quant.tflite \
			--emit static-lib -o $(DEMO)/lib > /dev/null && \
		$(MNC) compile Graphs/tf_mobilenet_v2.mnet --weights $(SHARED)/models/mobilenet_v2_1.0_224_quant.tflite \
			--labels $(SHARED)/models/imagenet_labels.txt --emit executable -o $(DEMO)/classifier > /dev/null && \
		echo "== $(DEMO)/lib/libtf_mobilenet_v2.a, $(DEMO)/lib/tf_mobilenet_v2.h" && \
		echo "== $(DEMO)/classifier/tf_mobilenet_v2 $(SHARED)/images/cat_720p.jpg" && \
		$(DEMO)/classifier/tf_mobilenet_v2 $(SHARED)/images/cat_720p.jpg; \
	else \
		echo "== $(SHARED) not found: compiling MobileNetV2 with RANDOM weights; the classes printed mean nothing"; \
		$(MNC) compile Graphs/mobilenet_v2.mnet --random-weights --emit static-lib -o $(DEMO)/lib > /dev/null && \
		$(MNC) compile Graphs/mobilenet_v2.mnet --random-weights --emit executable -o $(DEMO)/classifier > /dev/null && \
		printf 'P6\n64 48\n255\n' > $(DEMO)/gray.ppm && \
		head -c 9216 /dev/zero | tr '\0' '\200' >> $(DEMO)/gray.ppm && \
		echo "== $(DEMO)/lib/libmobilenet_v2.a, $(DEMO)/lib/mobilenet_v2.h" && \
		echo "== $(DEMO)/classifier/mobilenet_v2 $(DEMO)/gray.ppm" && \
		$(DEMO)/classifier/mobilenet_v2 $(DEMO)/gray.ppm; \
	fi

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

# The figures depend on the machine and its load: see BENCHMARKS.md for how they were taken.
bench:
	@SWIFT="$(SWIFT)" SHARED="$(SHARED)" bash Scripts/bench/bench.sh

clean:
	rm -rf .build build
