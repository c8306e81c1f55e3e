import Foundation
import XCTest
@testable import MNC

/// The package root, found from this file's path (Tests/MNCTests/TestSupport.swift).
let packageRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .deletingLastPathComponent()

/// `../shared/data` next to the package root: real models, photographs and PyTorch references.
let sharedData = packageRoot.deletingLastPathComponent().appendingPathComponent("shared/data")

/// Returns a path under `../shared/data`, or skips the test when the folder is absent.
func sharedDataPath(_ relative: String) throws -> String {
    let url = sharedData.appendingPathComponent(relative)
    guard FileManager.default.fileExists(atPath: url.path) else {
        throw XCTSkip("reference data not found: \(url.path) (../shared/data is absent)")
    }
    return url.path
}

func specPath(_ name: String) -> String {
    packageRoot.appendingPathComponent("Graphs/\(name).mnet").path
}

func loadSpec(_ name: String, _ overrides: SpecOverrides = SpecOverrides()) throws -> Graph {
    try lower(parseSpecFile(path: specPath(name)).applying(overrides))
}

/// Reads a raw little-endian float32 file.
func readFloats(_ path: String) throws -> [Float] {
    let data = try Data(contentsOf: URL(fileURLWithPath: path))
    return data.withUnsafeBytes { raw in
        (0..<data.count / 4).map { Float(bitPattern: UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: $0 * 4, as: UInt32.self))) }
    }
}

/// Deterministic input values in [-1, 1).
func randomInput(count: Int, seed: UInt64 = 7) -> [Float] {
    var generator = SplitMix64(state: seed)
    return (0..<count).map { _ in 2 * generator.nextUnit() - 1 }
}

func maxAbsDifference(_ a: [Float], _ b: [Float]) -> Float {
    zip(a, b).map { abs($0 - $1) }.max() ?? 0
}

func maxAbs(_ a: [Float]) -> Float {
    a.map(abs).max() ?? 0
}
