"""A plugin that cannot be imported: the runtime must report it by package name and keep going."""

raise ImportError("the broken plugin's dependency is missing")
