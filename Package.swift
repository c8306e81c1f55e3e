// swift-tools-version:6.0
import PackageDescription

/// Where Debian's llvm-14-dev installs LLVM's headers and libLLVM-14.so.
let llvmPrefix = "/usr/lib/llvm-14"

let package = Package(
    name: "mnc",
    products: [
        .executable(name: "mnc", targets: ["mnc"]),
        .library(name: "MNC", targets: ["MNC"]),
    ],
    targets: [
        // Image decoding and preprocessing in C. The same source is copied into every
        // standalone executable that `mnc compile --emit executable` builds, so the
        // compiler and the generated classifier preprocess images identically.
        .target(
            name: "CImage",
            path: "Sources/CImage",
            linkerSettings: [.linkedLibrary("jpeg"), .linkedLibrary("png")]
        ),
        // LLVM's C API from Debian's llvm-14-dev, for the LLVM backend.
        .systemLibrary(
            name: "CLLVM",
            path: "Sources/CLLVM"
        ),
        .target(
            name: "MNC",
            dependencies: ["CImage", "CLLVM"],
            path: "Sources/MNC",
            swiftSettings: [.unsafeFlags(["-Xcc", "-I\(llvmPrefix)/include"])],
            linkerSettings: [.unsafeFlags(["-L\(llvmPrefix)/lib", "-Xlinker", "-rpath", "-Xlinker", "\(llvmPrefix)/lib"])]
        ),
        .executableTarget(
            name: "mnc",
            dependencies: ["MNC"],
            path: "Sources/mnc"
        ),
        .testTarget(
            name: "MNCTests",
            dependencies: ["MNC"],
            path: "Tests/MNCTests"
        ),
    ],
    swiftLanguageModes: [.v5]
)
