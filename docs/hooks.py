"""MkDocs hook: publishes the benchmark plots under ``results/`` without copying them into docs/."""

from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parent.parent


def on_files(files, config):
  for png in sorted((ROOT / "benchmarks" / "results").glob("*.png")):
    files.append(File(f"results/{png.name}", str(ROOT / "benchmarks"), config["site_dir"],
                      config["use_directory_urls"]))
  return files
