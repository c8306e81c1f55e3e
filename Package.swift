// swift-tools-version:6.0
import PackageDescription

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
        .target(
            name: "MNC",
            dependencies: ["CImage"],
            path: "Sources/MNC"
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
