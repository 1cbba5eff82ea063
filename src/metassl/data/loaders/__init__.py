"""Built-in data set loaders, one module each; every module here is imported by plugin discovery."""
