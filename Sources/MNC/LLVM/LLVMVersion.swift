import CLLVM

/// The version of the LLVM headers mnc was built with, e.g. `14.0.6`.
public let llvmVersion = LLVM_VERSION_STRING

/// Creates and disposes an LLVM context: fails to link or load when libLLVM is missing.
func llvmContextRoundTrip() -> Bool {
    let context = LLVMContextCreate()
    defer { LLVMContextDispose(context) }
    return context != nil
}
