// Storage for the Functions host (AzureWebJobsStorage), the Flex deployment package and the detector's
// state table. No keys: shared-key access is off, so every caller uses Entra ID (the managed identity).

@description('Name of the storage account (3-24 lowercase letters and digits).')
param name string

@description('Region of the storage account.')
param location string

@description('Tags for the storage account.')
param tags object = {}

@description('Blob container the Flex Consumption plan deploys the app package from.')
param deploymentContainerName string

@description('Table that holds the detector\'s checkpoint and outbox (DETECTOR_STATE_TABLE_NAME).')
param stateTableName string

@description('Replication. LRS is enough: the state can be rebuilt by a catch-up run and the package by a redeploy.')
@allowed([
  'Standard_LRS'
  'Standard_ZRS'
  'Standard_GRS'
  'Standard_RAGRS'
  'Standard_GZRS'
  'Standard_RAGZRS'
])
param skuName string = 'Standard_LRS'

@description('Private networking: only the private endpoints of network.bicep reach the account (public network access off, default-deny firewall).')
param vnetEnabled bool = false

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  name: name
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: {
    name: skuName
  }
  properties: {
    accessTier: 'Hot'
    allowBlobPublicAccess: false
    allowCrossTenantReplication: false
    allowSharedKeyAccess: false // Entra ID only: no account keys, no SAS signed with keys
    defaultToOAuthAuthentication: true
    dnsEndpointType: 'Standard'
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    // A Flex app without a virtual network reaches its storage over the public endpoint, so the
    // firewall cannot default to Deny; access is still Entra-only and scoped by RBAC.
    // Without a VNet, a Flex app reaches its storage over the public endpoint; access is Entra-only then.
    publicNetworkAccess: vnetEnabled ? 'Disabled' : 'Enabled'
    networkAcls: {
      defaultAction: vnetEnabled ? 'Deny' : 'Allow'
      bypass: vnetEnabled ? 'None' : 'AzureServices'
    }
  }
}

// Child resources are declared with `parent:` rather than nested: pycep-parser (and so checkov) keeps only
// the last nested child of a resource, and these must all be checked.
resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: storage
  name: 'default'
  properties: {
    deleteRetentionPolicy: {
      enabled: true
      days: 7
    }
    containerDeleteRetentionPolicy: {
      enabled: true
      days: 7
    }
  }
}

resource deploymentContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: deploymentContainerName
  properties: {
    publicAccess: 'None'
  }
}

resource tableService 'Microsoft.Storage/storageAccounts/tableServices@2023-05-01' = {
  parent: storage
  name: 'default'
}

resource stateTable 'Microsoft.Storage/storageAccounts/tableServices/tables@2023-05-01' = {
  parent: tableService
  name: stateTableName
}

output name string = storage.name
output id string = storage.id
output blobEndpoint string = storage.properties.primaryEndpoints.blob
// Without the trailing slash: the form DETECTOR_STATE_TABLE_ENDPOINT documents (https://<account>.table.core.windows.net).
output tableEndpoint string = 'https://${storage.name}.table.${environment().suffixes.storage}'
output stateTableName string = stateTable.name
