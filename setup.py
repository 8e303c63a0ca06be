"""Maps the repository's folders onto the one import namespace ``llama_stack``.

Every subpackage under each folder is listed explicitly, so that none is silently left out of a wheel.
"""

from pathlib import Path

from setuptools import find_packages, setup

FOLDERS = {
    "llama_stack": "stack",
    "llama_stack.apis": "apis",
    "llama_stack.providers": "providers",
    "llama_stack.distributions": "distributions",
}


def mapped_packages() -> tuple[list[str], dict[str, str]]:
    packages: list[str] = []
    package_dir: dict[str, str] = {}
    for namespace, folder in FOLDERS.items():
        packages.append(namespace)
        package_dir[namespace] = folder
        for sub in find_packages(where=folder):
            name = f"{namespace}.{sub}"
            packages.append(name)
            package_dir[name] = str(Path(folder, *sub.split(".")))
    return packages, package_dir


packages, package_dir = mapped_packages()

setup(
    packages=packages,
    package_dir=package_dir,
    package_data={"llama_stack.distributions": ["*.yaml"]},
    include_package_data=True,
)
