"""Dataset layouts beyond SSL4MIS's: UA-MT's LA h5 folders and a NIfTI folder of your own.

They are registered by name in ``segssl.data.readers.LAYOUTS`` (``data.layout``) and imported
on use, so this package may build on the readers without an import cycle."""
