# lit configuration for ptc's IR, frontend, pass and diagnostic tests.
# Parameters (given by CTest, see CMakeLists.txt):
#   ptc         path of the ptc driver under test (ptc or ptc-san)
#   filecheck   path of FileCheck
#   ptc_source  the source tree (for %models)
import os
import lit.formats

config.name = "ptc"
config.test_format = lit.formats.ShTest(execute_external=True)
config.suffixes = [".ptg", ".ptir", ".test"]
config.excludes = ["Inputs"]
config.test_source_root = os.path.dirname(__file__)
# Temporary files go to the build tree (given by CTest), not the sources.
if lit_config.params.get("exec_root"):
    config.test_exec_root = lit_config.params["exec_root"]

ptc = lit_config.params.get("ptc", "ptc")
filecheck = lit_config.params.get("filecheck", "FileCheck")
src = lit_config.params.get("ptc_source",
                            os.path.dirname(os.path.dirname(config.test_source_root)))

config.substitutions.append(("%ptc", ptc))
config.substitutions.append(("%models", os.path.join(src, "models")))
config.substitutions.append(("FileCheck", filecheck))
# split-file and friends live beside FileCheck (llvm-14-tools).
tools_dir = os.path.dirname(filecheck)
if tools_dir:
    config.environment["PATH"] = tools_dir + os.pathsep + config.environment.get("PATH", os.environ.get("PATH", ""))
config.substitutions.append(("not ", os.path.join(config.test_source_root, "not") + " "))
config.environment["ASAN_OPTIONS"] = "detect_leaks=1:exitcode=86"
config.environment["UBSAN_OPTIONS"] = "print_stacktrace=1:halt_on_error=1:exitcode=87"
